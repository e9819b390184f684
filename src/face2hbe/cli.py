"""The `face2hbe` command line. Heavy libraries load inside each subcommand."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from . import contract
from .errors import Face2hbeError

DEFAULT_REPOSITORY = "model_repository"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(package_name="face2hbe")
def cli(verbose: bool) -> None:
    """face2hbe: find faces in photos, tell eyewear / beard / hat, recommend products.

    One VGG16 with three sigmoids, exported to ONNX and served by Triton.
    """
    _setup_logging(verbose)


# --- train -------------------------------------------------------------------------


@cli.command()
@click.option("--data", "data", multiple=True, required=True, metavar="KIND:PATH",
              help="Labeled data, repeatable: celeba:DIR (labels.csv + list_attr_celeba.txt), folders:DIR "
                   "(eyewear/ beard/ hat/ none/ sub-folders) or lfw:DIR (labels.csv with soft labels).")
@click.option("--output", type=click.Path(path_type=Path), required=True, help="Run folder: checkpoints, model.keras, training.json, curves.png. Rerun to resume.")
@click.option("--weights", default="imagenet", help="Backbone start: 'imagenet' (downloaded by Keras), 'none' (from scratch) or a local VGG16 .h5 file.")
@click.option("--batchnorm/--no-batchnorm", default=None, help="VGG16 with batch-norm after each conv. Default: on with --weights none, off otherwise.")
@click.option("--schedule", default=None, metavar="SIZE:EPOCHS[,...]", help="Working image sizes and epochs per stage, e.g. 64:6,96:2 (progressive resizing). Default: --image-size:--epochs.")
@click.option("--image-size", default=contract.INPUT_SIZE, type=click.IntRange(32, 512), help="Network working size (crops are resized to it inside the served graph).")
@click.option("--epochs", default=10, type=click.IntRange(1), help="Epochs when no --schedule is given.")
@click.option("--head-epochs", default=2, type=click.IntRange(0), help="Pretrained recipe: epochs with the base frozen before fine-tuning block5.")
@click.option("--batch-size", default=32, type=click.IntRange(1), help="Training batch size.")
@click.option("--learning-rate", type=float, default=None, help="Override the recipe's rate (pretrained: Adam 1e-3 then SGD 5e-5; scratch: AdamW 1e-3 cosine).")
@click.option("--attributes/--no-attributes", default=False, help="Multi-task: also learn every CelebA attribute the data sets carry.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Use only the first N samples of each data set (smoke tests).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=Path.home() / ".cache" / "face2hbe", help="Cache for decoded training crops.")
@click.option("--patience", default=4, type=click.IntRange(1), help="Early stop after this many epochs without validation AUC gain.")
@click.option("--augment/--no-augment", default=True, help="Flips, shifts, zooms, rotations, brightness and contrast.")
@click.option("--seed", default=0, type=int, help="Seed for weights, shuffling, augmentation and the validation split.")
def train(data, output, weights, batchnorm, schedule, image_size, epochs, head_epochs, batch_size, learning_rate, attributes, limit, cache_dir, patience, augment, seed):
    """Train the shared VGG16 + three-sigmoid model and report per-label ROC AUC."""
    from .training.train import TrainConfig, parse_schedule, train as run_training

    config = TrainConfig(
        data=list(data), output=output, weights=weights, batchnorm=batchnorm,
        schedule=parse_schedule(schedule) if schedule else [(image_size, epochs)], head_epochs=head_epochs,
        batch_size=batch_size, learning_rate=learning_rate, attributes=attributes, limit=limit,
        cache_dir=cache_dir, patience=patience, seed=seed, augment=augment,
    )
    summary = run_training(config)
    for split in ("validation", "test"):
        row = "  ".join(f"{label} {m.get('roc_auc', float('nan')):.3f}" for label, m in summary[split].items())
        click.echo(f"{split} ROC AUC: {row}")
    click.echo(f"model and metrics in {output}")


# --- export ------------------------------------------------------------------------


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repository", type=click.Path(path_type=Path), default=DEFAULT_REPOSITORY, help="Triton model repository to write into.")
@click.option("--max-batch-size", default=contract.MAX_BATCH_SIZE, type=click.IntRange(1), help="Triton max_batch_size.")
@click.option("--queue-delay-us", default=2000, type=click.IntRange(0), help="Dynamic batcher max_queue_delay_microseconds.")
def export(run_dir, repository, max_batch_size, queue_delay_us):
    """Export a training run to ONNX (preprocessing inside) in a Triton model repository."""
    from .export.build import export_repository
    from .export.repository import BatchingSettings

    batching = BatchingSettings(max_batch_size=max_batch_size, max_queue_delay_us=queue_delay_us,
                                preferred_batch_sizes=[b for b in (8, 16, 32) if b <= max_batch_size] or [max_batch_size])
    model_dir = export_repository(run_dir, repository, batching)
    click.echo(f"wrote {model_dir}")


# --- evaluate ----------------------------------------------------------------------


@cli.command()
@click.option("--data", required=True, metavar="KIND:PATH", help="Labeled set: celeba:DIR, folders:DIR or lfw:DIR (as for train).")
@click.option("--output", type=click.Path(path_type=Path), required=True, help="Folder for metrics.json and curves.png (ROC + precision-recall).")
@click.option("--url", default=None, help="Server address host:port (default 127.0.0.1:8001 for gRPC, :8000 for HTTP).")
@click.option("--protocol", type=click.Choice(["grpc", "http"]), default="grpc", help="KServe v2 protocol to call the server with.")
@click.option("--split", type=click.Choice(["train", "val", "test", "all"]), default="test", help="Which part of the seeded split (by identity where known, as in training) to evaluate.")
@click.option("--seed", default=0, type=int, help="Split seed; must match the training run's.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Use only the first N samples (before splitting).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=Path.home() / ".cache" / "face2hbe", help="Cache for detected training-data crops (never users' photos).")
def evaluate(data, output, url, protocol, split, seed, limit, cache_dir):
    """Per-label ROC AUC, PR AUC, accuracy and F1 of the served model on a labeled set (detect -> crop -> serve)."""
    from .training.evaluate import EvalConfig, evaluate as run_evaluation

    result = run_evaluation(EvalConfig(data=data, output=output, url=url, protocol=protocol, split=split, seed=seed, limit=limit, cache_dir=cache_dir))
    click.echo(f"{result['data']} ({result['split']}): {result['faces_found']} faces in {result['images']} images")
    for label, m in result["metrics"].items():
        click.echo(
            f"  {label:8s} ROC AUC {m.get('roc_auc', float('nan')):.3f}  PR AUC {m.get('pr_auc', float('nan')):.3f}  "
            f"acc {m.get('accuracy', float('nan')):.3f}  F1 {m.get('f1', float('nan')):.3f} @ {m.get('threshold', float('nan')):.3f}"
        )
    click.echo(f"metrics and curves in {output}")


# --- serve -------------------------------------------------------------------------


def server_options(f):
    for option in reversed([
        click.option("--repository", type=click.Path(path_type=Path), default=DEFAULT_REPOSITORY, help="Triton model repository."),
        click.option("--host", default=contract.DEFAULT_HOST, help="Address to bind. Keep 127.0.0.1 unless a proxy with auth/TLS fronts it."),
        click.option("--http-port", default=contract.HTTP_PORT, type=click.IntRange(1, 65535), help="KServe v2 HTTP/REST port."),
        click.option("--grpc-port", default=contract.GRPC_PORT, type=click.IntRange(1, 65535), help="KServe v2 gRPC port."),
        click.option("--metrics-port", default=contract.METRICS_PORT, type=click.IntRange(1, 65535), help="Prometheus metrics port."),
        click.option("--threads", type=click.IntRange(1), default=None, help="onnxruntime intra-op threads per instance (default: onnxruntime's choice)."),
        click.option("--instances", type=click.IntRange(1), default=None, help="Model instances (default: config.pbtxt's instance_group count)."),
    ]):
        f = option(f)
    return f


def settings_from_options(repository, host, http_port, grpc_port, metrics_port, threads, instances, **extra):
    from .serving.embedded import ServerSettings

    return ServerSettings(repository=repository, host=host, http_port=http_port, grpc_port=grpc_port,
                          metrics_port=metrics_port, threads_per_instance=threads, instance_count=instances, **extra)


@cli.command()
@server_options
def serve(**options):
    """Run the embedded Triton server (nvidia-pytriton) on the model repository until Ctrl-C/SIGTERM."""
    from .serving.embedded import EmbeddedServer

    server = EmbeddedServer(settings_from_options(**options))
    click.echo(f"labels {server.labels}, thresholds {server.thresholds}")
    server.serve_forever()
    click.echo("server stopped")


# --- recommend ---------------------------------------------------------------------


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--url", default=None, help="Server address host:port (default 127.0.0.1:8001 for gRPC, :8000 for HTTP).")
@click.option("--protocol", type=click.Choice(["grpc", "http"]), default="grpc", help="KServe v2 protocol to call the server with.")
@click.option("--output", type=click.Path(path_type=Path), default=Path("results.jsonl"), help="JSONL file, one record per image, written as each image finishes.")
@click.option("--resume", is_flag=True, help="Keep records already in --output and skip those images.")
@click.option("--catalog", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="Product catalog YAML (default: the bundled example).")
@click.option("--detector", type=click.Choice(["hog", "cnn"]), default="hog", help="face_recognition model.")
@click.option("--upsample", default=1, type=click.IntRange(0, 3), help="Detector up-sampling steps (finds smaller faces, 4x cost per step).")
@click.option("--max-side", default=800, type=click.IntRange(32), help="Detection runs on a copy no larger than this (boxes mapped back).")
@click.option("--min-face", default=20, type=click.IntRange(1), help="Ignore faces smaller than this many pixels.")
@click.option("--max-faces", default=20, type=click.IntRange(1), help="Score at most this many faces per image (largest first).")
@click.option("--max-pixels", default=50_000_000, type=click.IntRange(1), help="Refuse images with more pixels (decompression-bomb guard).")
@click.option("--max-file-mb", default=50.0, type=click.FloatRange(0.001), help="Refuse files larger than this.")
@click.option("--workers", default=None, type=click.IntRange(1), help="Detection worker processes (default: CPU count).")
@click.option("--in-flight", default=8, type=click.IntRange(1), help="Most inference requests in flight at once.")
@click.option("--timeout", default=30.0, type=click.FloatRange(0.1), help="Per-request timeout in seconds.")
@click.option("--retries", default=4, type=click.IntRange(0), help="Retries (exponential back-off) when the server is busy or down.")
@click.option("--skus-per-face", default=3, type=click.IntRange(1), help="Products listed per face.")
@click.option("--progress/--no-progress", default=True, help="Progress bar with faces/s.")
def recommend(paths, url, protocol, output, resume, catalog, detector, upsample, max_side, min_face, max_faces, max_pixels, max_file_mb, workers, in_flight, timeout, retries, skus_per_face, progress):
    """Recommend products for the faces in PATHS (image files; a folder is one profile)."""
    from .client.detect import DetectorSettings
    from .client.inference import ClientSettings
    from .client.recommend import Limits, Recommender
    from .client.report import print_report

    rec = Recommender(
        catalog=catalog,
        detector=DetectorSettings(model=detector, upsample=upsample, max_side=max_side, min_face=min_face),
        limits=Limits(max_pixels=max_pixels, max_file_bytes=int(max_file_mb * 1024 * 1024), max_faces=max_faces),
        skus_per_face=skus_per_face,
        workers=workers,
        client=ClientSettings(url=url, protocol=protocol, timeout_s=timeout, retries=retries, max_in_flight=in_flight),
    )
    summary = rec.run(paths, output, resume=resume, progress=progress, on_result=None)
    print_report(output, summary, rec.catalog)
    if summary.outage:
        raise Face2hbeError(f"{summary.outage}; {summary.not_processed} image(s) not processed: rerun with --resume")


def main(argv=None) -> int:
    """Console entry point: typed errors become one line on stderr and exit code 1."""
    try:
        cli.main(args=argv, prog_name="face2hbe", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except Face2hbeError as exc:
        click.echo(f"error: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
