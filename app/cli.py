"""The `face2hbe` command line. Heavy libraries load inside each subcommand."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from face2hbe import contract
from face2hbe.errors import Face2hbeError
from face2hbe.export.repository import BatchingSettings
from face2hbe.loadtest.runner import SLO, LoadTestSettings
from face2hbe.paths import CACHE_DIR

DEFAULT_REPOSITORY = "model_repository"


def _default(settings_class, name: str):
    """A settings dataclass field's default: the CLI states no default of its own."""
    import dataclasses

    field = {f.name: f for f in dataclasses.fields(settings_class)}[name]
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


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


def _train_default(name: str):
    from face2hbe.training.train import TrainConfig

    return _default(TrainConfig, name)


@cli.command()
@click.option(
    "--data",
    "data",
    multiple=True,
    metavar="KIND:PATH",
    help="Labeled data, repeatable: celeba:DIR (labels.csv + list_attr_celeba.txt), folders:DIR "
    "(eyewear/ beard/ hat/ none/ sub-folders) or lfw:DIR (labels.csv with soft labels).",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Run folder: checkpoints, model.keras, training.json, curves.png. Rerun to resume.",
)
@click.option(
    "--weights",
    default=_train_default("weights"),
    help="Backbone start: 'imagenet' (downloaded by Keras), 'none' (from scratch) or a local VGG16 .h5 file.",
)
@click.option(
    "--batchnorm/--no-batchnorm",
    default=None,
    help="VGG16 with batch-norm after each conv. Default: on with --weights none, off otherwise.",
)
@click.option(
    "--schedule",
    default=None,
    metavar="SIZE:EPOCHS[,...]",
    help="Working image sizes and epochs per stage, e.g. 64:6,96:2 (progressive resizing). Default: --image-size:--epochs.",
)
@click.option(
    "--image-size",
    default=contract.INPUT_SIZE,
    type=click.IntRange(32, 512),
    help="Network working size (crops are resized to it inside the served graph).",
)
@click.option("--epochs", default=10, type=click.IntRange(1), help="Epochs when no --schedule is given.")
@click.option(
    "--head-epochs",
    default=_train_default("head_epochs"),
    type=click.IntRange(0),
    help="Pretrained recipe: epochs with the base frozen before fine-tuning block5.",
)
@click.option("--batch-size", default=_train_default("batch_size"), type=click.IntRange(1), help="Training batch size.")
@click.option(
    "--learning-rate",
    type=float,
    default=None,
    help="Override the recipe's rate (pretrained: Adam 1e-3 then SGD 5e-5; scratch: AdamW 1e-3 cosine).",
)
@click.option(
    "--lr-schedule",
    type=click.Choice(["cosine", "constant"]),
    default=_train_default("lr_schedule"),
    show_default=True,
    help="From scratch: cosine decay over the planned epochs, or a constant rate (for checkpoint averaging).",
)
@click.option(
    "--keep-epoch-weights",
    is_flag=True,
    help="Also keep epoch-NN.weights.h5 after every epoch (inputs for tools/average_checkpoints.py).",
)
@click.option(
    "--attributes/--no-attributes",
    default=_train_default("attributes"),
    help="Multi-task: also learn every CelebA attribute the data sets carry.",
)
@click.option(
    "--limit", type=click.IntRange(1), default=None, help="Use only the first N samples of each data set (smoke tests)."
)
@click.option(
    "--cache-dir", type=click.Path(path_type=Path), default=CACHE_DIR, help="Cache for decoded training crops."
)
@click.option(
    "--patience",
    default=_train_default("patience"),
    type=click.IntRange(1),
    help="Early stop after this many epochs without validation AUC gain.",
)
@click.option(
    "--augment/--no-augment",
    default=_train_default("augment"),
    help="Flips, shifts, zooms, rotations, brightness, contrast, JPEG quality and blur.",
)
@click.option(
    "--init-weights",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Warm start from an earlier run's best.weights.h5 or model.keras, or from a served model.onnx "
    "(same network and targets), e.g. to add data.",
)
@click.option(
    "--mirror-average/--no-mirror-average",
    default=_train_default("mirror_average"),
    help="Score each face and its mirror and average (test-time augmentation): thresholds, metrics and the "
    "exported graph use it; twice the backbone compute per face. Rerun a finished run with it to re-evaluate.",
)
@click.option(
    "--seed",
    default=_train_default("seed"),
    type=int,
    help="Seed for weights, shuffling, augmentation and the validation split.",
)
@click.option(
    "--average",
    default=None,
    metavar="NAME[,NAME...]",
    help="Final weights: the mean of these checkpoints of the run (epoch-NN, last, init), batch-norm re-measured.",
)
@click.option(
    "--recipe",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Run the stages of a recipe file (e.g. training/recipes/served.yaml) into --output-root/NAME; "
    "train options given on the command line override every stage (e.g. --limit 24 --epochs 1 for a smoke run).",
)
@click.option("--stage", default=None, help="With --recipe: run only this stage (its init stage must be done).")
@click.option(
    "--output-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs"),
    help="With --recipe: folder of the stages' run folders.",
)
def train(
    data,
    output,
    weights,
    batchnorm,
    schedule,
    image_size,
    epochs,
    head_epochs,
    batch_size,
    learning_rate,
    lr_schedule,
    keep_epoch_weights,
    attributes,
    limit,
    cache_dir,
    patience,
    augment,
    init_weights,
    mirror_average,
    seed,
    average,
    recipe,
    stage,
    output_root,
):
    """Train the shared VGG16 + three-sigmoid model and report per-label ROC AUC."""
    from face2hbe.training.train import TrainConfig, parse_schedule
    from face2hbe.training.train import train as run_training

    def report(summary, where):
        for split in ("validation", "test"):
            row = "  ".join(f"{label} {m.get('roc_auc', float('nan')):.3f}" for label, m in summary[split].items())
            click.echo(f"{split} ROC AUC: {row}")
        click.echo(f"model and metrics in {where}")

    if recipe is not None:
        from face2hbe.training.recipe import run_recipe

        given = {
            name
            for name in click.get_current_context().params
            if click.get_current_context().get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
        }
        overrides = {
            name: value
            for name, value in (
                ("data", list(data)),
                ("weights", weights),
                ("batchnorm", batchnorm),
                ("head_epochs", head_epochs),
                ("batch_size", batch_size),
                ("learning_rate", learning_rate),
                ("lr_schedule", lr_schedule),
                ("keep_epoch_weights", keep_epoch_weights),
                ("attributes", attributes),
                ("limit", limit),
                ("cache_dir", cache_dir),
                ("patience", patience),
                ("augment", augment),
                ("mirror_average", mirror_average),
                ("seed", seed),
            )
            if name in given
        }
        if given & {"schedule", "image_size", "epochs"}:
            overrides["schedule"] = parse_schedule(schedule) if schedule else [(image_size, epochs)]
        if given & {"output", "init_weights", "average"}:
            raise click.UsageError("--output, --init-weights and --average come from the recipe (use --output-root)")
        for name, summary in run_recipe(recipe, output_root, only=stage, overrides=overrides).items():
            report(summary, output_root / name)
        return
    if not data or output is None:
        raise click.UsageError("give --data and --output (or --recipe)")
    config = TrainConfig(
        data=list(data),
        output=output,
        weights=weights,
        batchnorm=batchnorm,
        schedule=parse_schedule(schedule) if schedule else [(image_size, epochs)],
        head_epochs=head_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        attributes=attributes,
        limit=limit,
        cache_dir=cache_dir,
        patience=patience,
        seed=seed,
        augment=augment,
        init_weights=init_weights,
        mirror_average=mirror_average,
        lr_schedule=lr_schedule,
        keep_epoch_weights=keep_epoch_weights,
        average=average.split(",") if average else None,
    )
    report(run_training(config), output)


# --- export ------------------------------------------------------------------------


@cli.command()
@click.argument("run_dir", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "int8", "tensorrt"]),
    default="onnx",
    help="onnx: RUN_DIR -> <repository>/face2hbe (without RUN_DIR: only rewrite its config.pbtxt, keeping thresholds). "
    "int8: <repository>/face2hbe -> face2hbe_int8 (CPU, static INT8). tensorrt: -> face2hbe_trt (FP16 plan; needs a GPU).",
)
@click.option(
    "--repository",
    type=click.Path(path_type=Path),
    default=DEFAULT_REPOSITORY,
    help="Triton model repository to write into.",
)
@click.option(
    "--max-batch-size", default=contract.MAX_BATCH_SIZE, type=click.IntRange(1), help="Triton max_batch_size."
)
@click.option(
    "--queue-delay-us",
    default=_default(BatchingSettings, "max_queue_delay_us"),
    type=click.IntRange(0),
    help="Dynamic batcher max_queue_delay_microseconds (chosen by measurement, docs/serving.md).",
)
@click.option(
    "--device",
    type=click.Choice(["gpu", "cpu"]),
    default="gpu",
    help="Instances of the fp32 model: gpu (KIND_GPU + TensorRT FP16 accelerator) or cpu (KIND_CPU). INT8 is always CPU.",
)
@click.option(
    "--celeba",
    type=click.Path(path_type=Path),
    default=Path("../shared/data/celeba"),
    help="int8: CelebA folder for calibration (images 1-300) and the fp32-vs-int8 check (7001-8000); absent: calibrate on the sample photos' faces.",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="int8: markdown file whose INT8 section receives the measured table (e.g. docs/serving.md).",
)
@click.option(
    "--add-attributes",
    is_flag=True,
    help="Upgrade the repository's existing face2hbe and face2hbe_int8 graphs in place with the `attributes` output "
    "(a Gather from the head `scores` is sliced from; weights untouched), after checking with onnxruntime on "
    "real crops (CelebA test images from --celeba, else the sample photos' faces) that `scores` stay bit-identical.",
)
def export(run_dir, fmt, repository, max_batch_size, queue_delay_us, device, celeba, report, add_attributes):
    """Export to the Triton model repository: ONNX (preprocessing inside), its INT8 CPU variant, or a TensorRT plan."""
    from face2hbe.export.repository import rewrite_config

    if add_attributes:
        _add_attributes(repository, celeba)
        return

    batching = BatchingSettings(
        max_batch_size=max_batch_size,
        max_queue_delay_us=queue_delay_us,
        preferred_batch_sizes=tuple(
            b for b in _default(BatchingSettings, "preferred_batch_sizes") if b <= max_batch_size
        )
        or (max_batch_size,),
        instance_kind="KIND_CPU" if device == "cpu" else "KIND_GPU",
    )
    if fmt == "int8":
        import importlib.util

        from face2hbe.export.quantize import export_int8, write_report

        samples = Path(importlib.util.find_spec("face2hbe.client").origin).parent / "samples"  # bundled photos
        model_dir, result = export_int8(repository, celeba if celeba.is_dir() else None, samples, batching)
        click.echo(
            f"wrote {model_dir} ({(model_dir / contract.MODEL_VERSION / 'model.onnx').stat().st_size / 1e6:.1f} MB)"
        )
        if result is not None:
            click.echo(result.markdown())
            if report:
                write_report(
                    result, report, f"face2hbe export --format int8 --repository {repository} --report {report}"
                )
                click.echo(f"INT8 report written to {report}")
        else:
            click.echo(
                f"{celeba} not found: calibrated on the sample photos' faces; accuracy not measured, no report written"
            )
        return
    if fmt == "tensorrt":
        from face2hbe.export.tensorrt import export_tensorrt

        click.echo(f"wrote {export_tensorrt(repository, batching)}")
        return
    if run_dir is None:
        click.echo(f"rewrote {rewrite_config(Path(repository) / contract.MODEL_NAME, batching)}")
        return
    from face2hbe.export.build import export_repository

    model_dir = export_repository(run_dir, repository, batching)
    click.echo(f"wrote {model_dir}")


def _add_attributes(repository: Path, celeba: Path) -> None:
    import importlib.util

    from face2hbe.export.attributes import CHECK_RANGE, upgrade_repository
    from face2hbe.export.quantize import celeba_crops, sample_crops

    if (celeba / "labels.csv").is_file():
        crops, _ = celeba_crops(celeba, *CHECK_RANGE)
        where = f"CelebA images {CHECK_RANGE[0]}-{CHECK_RANGE[1]}"
    else:
        crops = sample_crops(Path(importlib.util.find_spec("face2hbe.client").origin).parent / "samples")
        where = "the sample photos' faces"
    checks = upgrade_repository(repository, crops)
    if not checks:
        click.echo(f"{repository}: every model already has the {contract.ATTRIBUTES_NAME!r} output; nothing to do")
    for check in checks:
        click.echo(
            f"upgraded {check.model}: scores bit-identical on {check.faces} faces from {where}; "
            f"attributes = head columns {list(contract.ATTRIBUTE_COLUMNS)}"
        )


# --- slices ------------------------------------------------------------------------


@cli.command()
@click.option(
    "--celeba",
    type=click.Path(path_type=Path),
    default=Path("../shared/data/celeba"),
    help="CelebA folder (labels.csv + list_attr_celeba.txt).",
)
@click.option(
    "--lfw",
    type=click.Path(path_type=Path),
    default=Path("../shared/data/lfw"),
    help="LFW folder (labels.csv with FaRL pseudo-labels).",
)
@click.option(
    "--repository",
    type=click.Path(path_type=Path),
    default=DEFAULT_REPOSITORY,
    help="Model repository whose face2hbe graph is scored (onnxruntime, CPU).",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=CACHE_DIR,
    help="Cache for detected training-data crops (never users' photos).",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the slice metrics as JSON here.",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Markdown file whose slices section receives the table (docs/model.md).",
)
def slices(celeba, lfw, repository, cache_dir, output, report):
    """Recall at the served thresholds and ROC AUC per slice (grey hair, moustache without goatee, sex, age, pale skin) of the test splits."""
    from face2hbe.paths import portable

    from . import slices as slice_report

    result = slice_report.run(str(celeba), str(lfw), repository, cache_dir)
    click.echo(slice_report.markdown(result))
    if output:
        slice_report.save_json(result, output)
    if report:
        command = f"face2hbe slices --celeba {portable(celeba)} --lfw {portable(lfw)} --report {portable(report)}" + (
            f" --output {portable(output)}" if output else ""
        )
        slice_report.write_report(result, report, command)


# --- thresholds --------------------------------------------------------------------


@cli.command()
@click.option(
    "--celeba",
    type=click.Path(path_type=Path),
    default=Path("../shared/data/celeba"),
    help="CelebA folder (labels.csv + list_attr_celeba.txt).",
)
@click.option(
    "--lfw",
    type=click.Path(path_type=Path),
    default=Path("../shared/data/lfw"),
    help="LFW folder (labels.csv with FaRL pseudo-labels).",
)
@click.option(
    "--repository",
    type=click.Path(path_type=Path),
    default=DEFAULT_REPOSITORY,
    help="Model repository whose face2hbe graph is scored (onnxruntime, CPU).",
)
@click.option("--seed", default=0, type=int, help="Split seed; must match the training run's.")
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=CACHE_DIR,
    help="Cache for detected training-data crops (never users' photos).",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the thresholds and per-domain metrics as JSON here.",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Markdown file whose thresholds section receives the tables (docs/model.md).",
)
@click.option(
    "--write",
    is_flag=True,
    help="Write the chosen thresholds and the production labels (CelebA-test ROC AUC at or above "
    "the bar; kept as they are with --no-test) into face2hbe's, face2hbe_int8's and face2hbe_photo's config.pbtxt.",
)
@click.option("--no-test", is_flag=True, help="Skip the test-split measurement (choose on val only; faster).")
def thresholds(celeba, lfw, repository, seed, cache_dir, output, report, write, no_test):
    """Choose every served label's threshold on a CelebA + LFW validation mix; report P/R/F1 per domain and test ROC AUC."""
    from face2hbe.paths import portable, portable_spec

    from .thresholds import apply, markdown, production, run, save_json, write_report

    for folder in (celeba, lfw):
        if not (folder / "labels.csv").is_file():
            raise click.ClickException(f"{folder}: no labels.csv (see ../shared/data/README.md)")
    result = run(str(celeba), str(lfw), repository, cache_dir, seed, with_test=not no_test)
    result["data"] = [portable_spec(f"celeba:{celeba}"), portable_spec(f"lfw:{lfw}")]
    click.echo(markdown(result))
    if output:
        save_json(result, output)
    if report:
        write_report(
            result,
            report,
            f"face2hbe thresholds --celeba {portable(celeba)} --lfw {portable(lfw)} "
            f"--write --report {report}" + (f" --output {output}" if output else ""),
        )
    if write:
        for path in apply(repository, result["thresholds"], production(result)):
            click.echo(f"wrote {path}")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--repository",
    type=click.Path(path_type=Path),
    default=DEFAULT_REPOSITORY,
    help="Model repository to promote into (its served model is the gate's baseline).",
)
@click.option(
    "--celeba",
    type=click.Path(path_type=Path),
    default=Path("../shared/data/celeba"),
    help="CelebA folder: thresholds (val), INT8 calibration, gate (test).",
)
@click.option(
    "--lfw",
    type=click.Path(path_type=Path),
    default=Path("../shared/data/lfw"),
    help="LFW folder: thresholds (val), gate (test identities).",
)
@click.option(
    "--more",
    type=click.Path(path_type=Path),
    multiple=True,
    default=[Path("../shared/data/celeba_more")],
    help="Further CelebA folders with identities whose test split the gate also measures (skipped when absent).",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=CACHE_DIR,
    help="Cache for detected training-data crops (never users' photos).",
)
@click.option(
    "--docs",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("docs"),
    help="Docs folder whose model.md (gate, thresholds, slices), serving.md (INT8) and eval/*.json are rewritten on promotion.",
)
@click.option("--dry-run", is_flag=True, help="Stage and gate only: nothing in the repository or the docs changes.")
@click.option("--force", is_flag=True, help="Promote even when the gate refuses (the refusal is still reported).")
def promote(run_dir, repository, celeba, lfw, more, cache_dir, docs, dry_run, force):
    """Serve a training run: fp32 + INT8 from it, thresholds on validation, a gate against the served model on the test splits."""
    from .promote import PromoteSettings, markdown
    from .promote import promote as run_promote

    for folder in (celeba, lfw):
        if not (folder / "labels.csv").is_file():
            raise click.ClickException(f"{folder}: no labels.csv (see ../shared/data/README.md)")
    settings = PromoteSettings(
        run_dir,
        repository,
        celeba,
        lfw,
        [m for m in more if (m / "labels.csv").is_file()],
        cache_dir,
        docs,
        force,
        dry_run,
    )
    result = run_promote(settings)
    click.echo(markdown(result["gate"]))
    if result["promoted"]:
        click.echo(
            f"promoted {run_dir} into {repository}: " + ", ".join(f"{k} {v[:12]}" for k, v in result["sha256"].items())
        )
    elif not dry_run:
        click.echo(f"not promoted: the gate refused {run_dir} (--force promotes anyway)", err=True)
    sys.exit(0 if result["promoted"] or (dry_run and result["gate"]["passed"]) else 1)


@cli.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for review.html and corrections.csv.",
)
@click.option(
    "--repository",
    type=click.Path(path_type=Path),
    default=DEFAULT_REPOSITORY,
    help="Model repository whose face2hbe graph scores the photos (onnxruntime, CPU).",
)
@click.option(
    "--per-kind",
    default=12,
    type=click.IntRange(1),
    help="How many false positives and false negatives to show per label.",
)
def review(folder, output, repository, per_kind):
    """Worst false positives/negatives per label on a labelled folder (eyewear/ beard/ hat/ none/): an HTML page and a corrections CSV."""
    from .review import review as run_review

    result = run_review(folder, output, repository, per_kind)
    click.echo(
        f"{result['photos']} photos, {result['faces']} with a face, {result['mistakes']} mistakes shown: "
        f"{result['html']}, {result['csv']} (save corrected as {folder / 'corrections.csv'})"
    )


# --- evaluate ----------------------------------------------------------------------


@cli.command()
@click.option(
    "--data", required=True, metavar="KIND:PATH", help="Labeled set: celeba:DIR, folders:DIR or lfw:DIR (as for train)."
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder for metrics.json and curves.png (ROC + precision-recall).",
)
@click.option("--url", default=None, help="Server address host:port (default 127.0.0.1:8001 for gRPC, :8000 for HTTP).")
@click.option(
    "--protocol",
    type=click.Choice(["grpc", "http"]),
    default="grpc",
    help="KServe v2 protocol to call the server with.",
)
@click.option(
    "--split",
    type=click.Choice(["train", "val", "test", "all"]),
    default="test",
    help="Which part of the seeded split (by identity where known, as in training) to evaluate.",
)
@click.option("--seed", default=0, type=int, help="Split seed; must match the training run's.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Use only the first N samples (before splitting).")
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=CACHE_DIR,
    help="Cache for detected training-data crops (never users' photos).",
)
def evaluate(data, output, url, protocol, split, seed, limit, cache_dir):
    """Per-label ROC AUC, PR AUC, accuracy and F1 of the served model on a labeled set (detect -> crop -> serve)."""
    from .evaluate import EvalConfig
    from .evaluate import evaluate as run_evaluation

    result = run_evaluation(
        EvalConfig(
            data=data,
            output=output,
            url=url,
            protocol=protocol,
            split=split,
            seed=seed,
            limit=limit,
            cache_dir=cache_dir,
        )
    )
    click.echo(f"{result['data']} ({result['split']}): {result['faces_found']} faces in {result['images']} images")
    for label, m in result["metrics"].items():
        click.echo(
            f"  {label:8s} ROC AUC {m.get('roc_auc', float('nan')):.3f}  PR AUC {m.get('pr_auc', float('nan')):.3f}  "
            f"acc {m.get('accuracy', float('nan')):.3f}  F1 {m.get('f1', float('nan')):.3f} @ {m.get('threshold', float('nan')):.3f}"
        )
    click.echo(f"metrics and curves in {output}")


# --- serve -------------------------------------------------------------------------


def server_options(f):
    for option in reversed(
        [
            click.option(
                "--repository",
                type=click.Path(path_type=Path),
                default=DEFAULT_REPOSITORY,
                help="Triton model repository.",
            ),
            click.option(
                "--host",
                default=contract.DEFAULT_HOST,
                help="Address to bind. Keep 127.0.0.1 unless a proxy with auth/TLS fronts it.",
            ),
            click.option(
                "--http-port",
                default=contract.HTTP_PORT,
                type=click.IntRange(1, 65535),
                help="KServe v2 HTTP/REST port.",
            ),
            click.option(
                "--grpc-port", default=contract.GRPC_PORT, type=click.IntRange(1, 65535), help="KServe v2 gRPC port."
            ),
            click.option(
                "--metrics-port",
                default=contract.METRICS_PORT,
                type=click.IntRange(1, 65535),
                help="Prometheus metrics port.",
            ),
            click.option(
                "--threads",
                type=click.IntRange(1),
                default=None,
                help="onnxruntime intra-op threads per instance (default: onnxruntime's choice).",
            ),
            click.option(
                "--instances",
                type=click.IntRange(1),
                default=None,
                help="Model instances (default: config.pbtxt's instance_group count).",
            ),
        ]
    ):
        f = option(f)
    return f


def _server_default(name: str, choices: bool = False):
    from face2hbe.repository import PRECISION_FOLDERS
    from face2hbe.serving.embedded import ServerSettings

    return tuple(PRECISION_FOLDERS) if choices else _default(ServerSettings, name)


def _graphs():
    from face2hbe.graphs import GRAPHS

    return GRAPHS


def settings_from_options(repository, host, http_port, grpc_port, metrics_port, threads, instances, **extra):
    from face2hbe.serving.embedded import ServerSettings

    return ServerSettings(
        repository=repository,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        threads_per_instance=threads,
        instance_count=instances,
        **extra,
    )


@cli.command()
@server_options
@click.option(
    "--precision",
    type=click.Choice(_server_default("precision", choices=True)),
    default=_server_default("precision"),
    show_default=True,
    help="Which file serves face2hbe on this CPU server: int8 (<repository>/face2hbe_int8) or fp32 (<repository>/face2hbe). "
    "Clients call face2hbe either way. Chosen by measurement: docs/serving.md, CPU default.",
)
@click.option(
    "--graph",
    type=click.Choice(_graphs()),
    default=_server_default("graph"),
    show_default=True,
    help="mirror: each face and its mirror image, averaged (as exported); plain: one pass per face (faster, AUC 0.001-0.003 lower).",
)
@click.option("--no-batching", is_flag=True, help="Disable the dynamic batcher (benchmarks).")
@click.option(
    "--no-photo",
    is_flag=True,
    help=f"Do not serve the photo model ({contract.PHOTO_MODEL_NAME}: photo bytes in, every face out) "
    "even when its folder is in the repository.",
)
@click.option(
    "--server-log",
    default=None,
    metavar="FILE",
    help="tritonserver's own output: FILE, or - for stdout (default: a file in the server's workspace; a failed start keeps it and names it).",
)
@click.pass_context
def serve(ctx, precision, graph, no_batching, no_photo, server_log, **options):
    """Run NVIDIA's tritonserver on this host's form of the model repository until Ctrl-C/SIGTERM."""
    from face2hbe.net import check_ports_free

    # Before anything starts or is written: a taken port is one line and exit code 2.
    check_ports_free(
        options["host"],
        {"HTTP": options["http_port"], "gRPC": options["grpc_port"], "metrics": options["metrics_port"]},
    )
    from face2hbe.serving.embedded import EmbeddedServer

    verbose = ctx.find_root().params.get("verbose")
    server = EmbeddedServer(
        settings_from_options(
            **options,
            precision=precision,
            graph=graph,
            no_batching=no_batching,
            photo=not no_photo,
            server_log=server_log or ("-" if verbose else None),
        )
    )
    click.echo(f"labels {server.labels}, thresholds {server.thresholds}")
    server.serve_forever()
    click.echo("server stopped")


# --- recommend ---------------------------------------------------------------------


def _photo_options(*names):
    """The options `recommend` and `batch` share, by name; every default comes from a settings dataclass."""
    import inspect

    from face2hbe.client.inference import ClientSettings
    from face2hbe.client.recommend import Limits, Recommender
    from face2hbe.detection import DETECTOR_MODELS, DetectorSettings

    D, L, C = (
        (lambda n: _default(DetectorSettings, n)),
        (lambda n: _default(Limits, n)),
        (lambda n: _default(ClientSettings, n)),
    )
    table = {
        "url": click.option(
            "--url", default=None, help="Server address host:port (default 127.0.0.1:8001 for gRPC, :8000 for HTTP)."
        ),
        "protocol": click.option(
            "--protocol",
            type=click.Choice(["grpc", "http"]),
            default=C("protocol"),
            help="KServe v2 protocol to call the server with.",
        ),
        "catalog": click.option(
            "--catalog",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=None,
            help="Product catalog: YAML, or CSV when the name ends in .csv (columns sku,label,name,price,url,min_score,priority; see docs/client.md). Default: the bundled example.",
        ),
        "detector": click.option(
            "--detector",
            type=click.Choice(DETECTOR_MODELS),
            default=D("model"),
            help="Face detector: BlazeFace (default: retry on a padded copy, boxes framed like HOG's), dlib HOG, or dlib CNN (slow).",
        ),
        "upsample": click.option(
            "--upsample",
            default=D("upsample"),
            type=click.IntRange(0, 3),
            help="Detector up-sampling steps (finds smaller faces, 4x cost per step).",
        ),
        "retry_upsample": click.option(
            "--retry-upsample",
            default=D("retry_upsample"),
            type=click.IntRange(0, 3),
            help="When no face is found, look again with this many up-samplings (0 = never).",
        ),
        "min_score": click.option(
            "--min-score",
            default=D("min_score"),
            type=float,
            help="Drop HOG detections scoring below this (weak hits on badges and patterns); ignored for cnn.",
        ),
        "max_side": click.option(
            "--max-side",
            default=D("max_side"),
            type=click.IntRange(32),
            help="Detection runs on a copy no larger than this (boxes mapped back).",
        ),
        "min_face": click.option(
            "--min-face",
            default=D("min_face"),
            type=click.IntRange(1),
            help="Ignore faces smaller than this many pixels.",
        ),
        "max_faces": click.option(
            "--max-faces",
            default=L("max_faces"),
            type=click.IntRange(1),
            help="Score at most this many faces per image (largest first).",
        ),
        "max_pixels": click.option(
            "--max-pixels",
            default=L("max_pixels"),
            type=click.IntRange(1),
            help="Refuse images with more pixels (decompression-bomb guard).",
        ),
        "max_file_mb": click.option(
            "--max-file-mb",
            default=L("max_file_bytes") / 1024 / 1024,
            type=click.FloatRange(0.001),
            help="Refuse files larger than this.",
        ),
        "image_timeout": click.option(
            "--image-timeout",
            default=L("image_timeout_s"),
            type=click.FloatRange(0.1),
            help="Seconds to read and detect one image before it gets an error record.",
        ),
        "in_flight": click.option(
            "--in-flight",
            default=C("max_in_flight"),
            type=click.IntRange(1),
            help="Most inference requests in flight at once.",
        ),
        "timeout": click.option(
            "--timeout", default=C("timeout_s"), type=click.FloatRange(0.1), help="Per-request timeout in seconds."
        ),
        "retries": click.option(
            "--retries",
            default=C("retries"),
            type=click.IntRange(0),
            help="Retries (jittered exponential back-off) when the server is busy, down or loading the model.",
        ),
        "wait_ready": click.option(
            "--wait-ready",
            default=C("wait_ready_s"),
            type=click.FloatRange(0),
            help="Seconds to wait at start for the model to be ready (a server still starting).",
        ),
        "skus_per_face": click.option(
            "--skus-per-face",
            default=inspect.signature(Recommender).parameters["skus_per_face"].default,
            type=click.IntRange(1),
            help="Products listed per face.",
        ),
    }

    def decorate(f):
        for name in reversed(names):
            f = table[name](f)
        return f

    return decorate


def _detect_modes():
    from face2hbe.client.recommend import DETECT_MODES

    return DETECT_MODES


DETECTION_OPTIONS = (
    "detector",
    "upsample",
    "retry_upsample",
    "min_score",
    "max_side",
    "min_face",
    "max_faces",
    "max_pixels",
    "max_file_mb",
)


def _detection_settings(
    detector,
    upsample,
    retry_upsample,
    min_score,
    max_side,
    min_face,
    max_faces,
    max_pixels,
    max_file_mb,
    image_timeout=None,
):
    """(DetectorSettings, Limits) from the shared options."""
    from face2hbe.client.recommend import Limits
    from face2hbe.detection import DetectorSettings, require_detector

    limits = dict(max_pixels=max_pixels, max_file_bytes=int(max_file_mb * 1024 * 1024), max_faces=max_faces)
    require_detector(detector)  # a missing package fails here, in one line, before any worker starts
    return (
        DetectorSettings(
            model=detector,
            upsample=upsample,
            retry_upsample=retry_upsample,
            min_score=min_score,
            max_side=max_side,
            min_face=min_face,
        ),
        Limits(**limits, **({"image_timeout_s": image_timeout} if image_timeout is not None else {})),
    )


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@_photo_options("url", "protocol")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=Path("results.jsonl"),
    help="JSONL file, one record per image, written as each image finishes.",
)
@click.option("--resume", is_flag=True, help="Keep records already in --output and skip those images.")
@_photo_options("catalog", *DETECTION_OPTIONS, "image_timeout")
@click.option(
    "--detect",
    type=click.Choice(_detect_modes()),
    default=_detect_modes()[0],
    help="Where faces are found: local (detection threads here, crops sent to the face model) or server (photo bytes "
    "sent to the photo model, face2hbe_photo; the detector options then are the server's).",
)
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(1),
    help="Detection threads (default: the CPUs this process may use).",
)
@_photo_options("in_flight", "timeout", "retries", "wait_ready", "skus_per_face")
@click.option("--progress/--no-progress", default=True, help="Progress bar with faces/s.")
@click.option(
    "--annotate",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Also write a JPEG copy of each photo to DIR (same names) with face boxes, labels, scores and products.",
)
def recommend(
    paths,
    url,
    protocol,
    output,
    resume,
    catalog,
    detector,
    upsample,
    retry_upsample,
    min_score,
    max_side,
    min_face,
    max_faces,
    max_pixels,
    max_file_mb,
    image_timeout,
    detect,
    workers,
    in_flight,
    timeout,
    retries,
    wait_ready,
    skus_per_face,
    progress,
    annotate,
):
    """Recommend products for the faces in PATHS (image files; a folder is one profile)."""
    from face2hbe.client.inference import ClientSettings
    from face2hbe.client.recommend import Recommender
    from face2hbe.client.report import print_report

    detection, limits = _detection_settings(
        detector,
        upsample,
        retry_upsample,
        min_score,
        max_side,
        min_face,
        max_faces,
        max_pixels,
        max_file_mb,
        image_timeout,
    )
    rec = Recommender(
        catalog=catalog,
        detector=detection,
        limits=limits,
        skus_per_face=skus_per_face,
        workers=workers,
        client=ClientSettings(
            url=url,
            protocol=protocol,
            timeout_s=timeout,
            retries=retries,
            max_in_flight=in_flight,
            wait_ready_s=wait_ready,
        ),
        detect=detect,
    )
    summary = rec.run(paths, output, resume=resume, progress=progress, on_result=None, annotate=annotate)
    print_report(output, summary, rec.catalog)
    if summary.outage:
        raise Face2hbeError(f"{summary.outage}; {summary.not_processed} image(s) not processed: rerun with --resume")
    if summary.inference_errors:
        raise Face2hbeError(
            f"{summary.inference_errors} image(s) got an inference error from the server (see {output}): "
            "rerun with --resume to retry them"
        )


# --- batch -------------------------------------------------------------------------


def _batch_default(name: str):
    from face2hbe.client.batch import BatchSettings

    return _default(BatchSettings, name)


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--output",
    default=_batch_default("output"),
    help="Folder (or a pyarrow filesystem URI, e.g. s3://bucket/prefix): results/part-*.parquet (one row per image, "
    "faces nested) and profiles.parquet. Rerun to resume.",
)
@click.option(
    "--engine",
    type=click.Choice(["triton", "local"]),
    default=_batch_default("engine"),
    help="triton: score on a Triton server over gRPC (--url); local: onnxruntime in the scoring actors on --repository's model.",
)
@click.option("--url", default=None, help="Triton gRPC host:port (default 127.0.0.1:8001).")
@click.option(
    "--repository",
    type=click.Path(path_type=Path),
    default=DEFAULT_REPOSITORY,
    help="Model repository for --engine local.",
)
@click.option(
    "--jsonl",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write every output row as recommend's JSONL records.",
)
@click.option(
    "--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray on this machine)."
)
@click.option(
    "--cpu-workers", type=click.IntRange(1), default=None, help="Detection tasks at once (default: every CPU Ray has)."
)
@click.option(
    "--scorers",
    type=click.IntRange(1),
    default=_batch_default("scorers"),
    help="Scoring actors (per Triton replica; see docs/batch.md).",
)
@click.option("--in-flight", default=4, type=click.IntRange(1), help="Batches (requests) in flight per scoring actor.")
@click.option(
    "--images-per-task",
    default=_batch_default("images_per_task"),
    type=click.IntRange(1),
    help="Images per detection task and per scoring call.",
)
@click.option(
    "--rows-per-part",
    default=_batch_default("rows_per_part"),
    type=click.IntRange(1),
    help="Images per Parquet part file (at most).",
)
@click.option(
    "--local-cpus",
    type=click.IntRange(1),
    default=None,
    help="CPUs of the local Ray (default: the CPUs this process may use).",
)
@_photo_options("catalog", *DETECTION_OPTIONS, "timeout", "retries", "wait_ready", "skus_per_face")
@click.option(
    "--progress/--no-progress",
    default=True,
    help="Progress: Ray Data's bars on a terminal; elsewhere (a log, a pipe) one log line per stage.",
)
@click.option(
    "--pause-after",
    type=click.IntRange(1),
    default=None,
    hidden=True,
    help="Test hook: a scoring actor pauses after N images.",
)
@click.option(
    "--pause-file",
    type=click.Path(path_type=Path),
    default=None,
    hidden=True,
    help="Test hook: the pause ends when this file exists.",
)
@click.option(
    "--pause-stage",
    type=click.Choice(["score", "prepare"]),
    default="score",
    hidden=True,
    help="Test hook: which stage's worker pauses.",
)
def batch(
    paths,
    output,
    engine,
    url,
    repository,
    jsonl,
    address,
    cpu_workers,
    scorers,
    in_flight,
    images_per_task,
    rows_per_part,
    local_cpus,
    catalog,
    detector,
    upsample,
    retry_upsample,
    min_score,
    max_side,
    min_face,
    max_faces,
    max_pixels,
    max_file_mb,
    timeout,
    retries,
    wait_ready,
    skus_per_face,
    progress,
    pause_after,
    pause_file,
    pause_stage,
):
    """Batch job on Ray Data: PATHS (folders, image files, .txt lists of paths, Parquet/CSV manifests with a
    `path` column) -> Parquet results. Exit 1 when any output row is an error."""
    from face2hbe.client.batch import BatchSettings, run_batch, summary_rows
    from face2hbe.client.catalog import load_catalog
    from face2hbe.client.inference import ClientSettings
    from face2hbe.client.report import print_report

    detection, limits = _detection_settings(
        detector, upsample, retry_upsample, min_score, max_side, min_face, max_faces, max_pixels, max_file_mb
    )
    settings = BatchSettings(
        output=output,
        engine=engine,
        repository=repository,
        catalog=catalog,
        jsonl=jsonl,
        address=address,
        client=ClientSettings(
            url=url,
            protocol="grpc",
            timeout_s=timeout,
            retries=retries,
            max_in_flight=in_flight,
            wait_ready_s=wait_ready,
        ),
        detector=detection,
        limits=limits,
        skus_per_face=skus_per_face,
        cpu_workers=cpu_workers,
        scorers=scorers,
        images_per_task=images_per_task,
        rows_per_part=rows_per_part,
        num_cpus=local_cpus,
        progress=progress,
        pause_after=pause_after,
        pause_file=pause_file,
        pause_stage=pause_stage,
    )
    summary = run_batch(paths, settings)
    from face2hbe.client.batch import read_output, record_from_row

    records = [record_from_row(r) for r in read_output(output)] if summary.output_rows <= 50 else []  # no image table
    print_report(output, summary, load_catalog(catalog), records=records, extra_rows=summary_rows(summary))
    if summary.output_errors:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(summary.output_errors.items()))
        raise Face2hbeError(
            f"{sum(summary.output_errors.values())} of {summary.output_rows} output rows are errors ({kinds}); "
            "rerun with the same --output to retry server and read errors"
        )


# --- loadtest / bench --------------------------------------------------------------


@cli.command()
@click.option(
    "--repository",
    type=click.Path(path_type=Path),
    default=DEFAULT_REPOSITORY,
    help="Model repository for the embedded server started when no URL is given.",
)
@click.option(
    "--grpc-url",
    default=None,
    help="Existing server's gRPC host:port (loopback only). Default: start the embedded server on free ports.",
)
@click.option(
    "--http-url",
    default=None,
    help="Existing server's HTTP host:port (loopback only). Default: start the embedded server on free ports.",
)
@click.option(
    "--users",
    default=_default(LoadTestSettings, "users"),
    type=click.IntRange(1, 64),
    help="Concurrent Locust users (at most 64).",
)
@click.option(
    "--spawn-rate",
    default=_default(LoadTestSettings, "spawn_rate"),
    type=click.FloatRange(0.1),
    help="Users started per second.",
)
@click.option(
    "--duration",
    default=_default(LoadTestSettings, "duration_s"),
    type=click.IntRange(1, 600),
    help="Run time in seconds (at most 600); with --requests, a cap.",
)
@click.option(
    "--requests",
    "max_requests",
    default=_default(LoadTestSettings, "max_requests"),
    type=click.IntRange(0),
    help="Stop after this many requests (load by count, the same on any machine); 0 = run for --duration.",
)
@click.option(
    "--batch-size",
    default=_default(LoadTestSettings, "batch_size"),
    type=click.IntRange(1, contract.MAX_BATCH_SIZE),
    help="Faces per inference request.",
)
@click.option(
    "--grpc-weight",
    default=_default(LoadTestSettings, "grpc_weight"),
    type=click.IntRange(0),
    help="Relative share of gRPC users (0 = none).",
)
@click.option(
    "--http-weight",
    default=_default(LoadTestSettings, "http_weight"),
    type=click.IntRange(0),
    help="Relative share of HTTP users (0 = none).",
)
@click.option(
    "--think-time",
    default=_default(LoadTestSettings, "think_time_s"),
    type=click.FloatRange(0),
    help="Mean seconds each user waits between requests (0 = closed loop, back to back).",
)
@click.option(
    "--output-dir",
    type=click.Path(path_type=Path),
    default=Path("out/loadtest"),
    help="Folder for Locust's CSVs, report.html, locust.log and verdict.json.",
)
@click.option(
    "--slo-p95-ms",
    default=_default(SLO, "p95_ms"),
    type=click.FloatRange(0),
    help="SLO: 95th-percentile request latency at most this many ms.",
)
@click.option(
    "--slo-max-error-rate",
    default=_default(SLO, "max_error_rate"),
    type=click.FloatRange(0, 1),
    help="SLO: at most this fraction of requests may fail.",
)
@click.option(
    "--slo-min-rps",
    default=_default(SLO, "min_rps"),
    type=click.FloatRange(0),
    help="SLO: at least this many requests per second (0 = no floor).",
)
def loadtest(
    repository,
    grpc_url,
    http_url,
    users,
    spawn_rate,
    duration,
    max_requests,
    batch_size,
    grpc_weight,
    http_weight,
    think_time,
    output_dir,
    slo_p95_ms,
    slo_max_error_rate,
    slo_min_rps,
):
    """Load-test the server with Locust (real face crops, gRPC + HTTP users) and judge the SLO; exit 1 when missed."""
    from face2hbe.loadtest.runner import SLO, LoadTestSettings, SLOMissedError, print_verdict, run_loadtest

    verdict = run_loadtest(
        LoadTestSettings(
            output_dir=output_dir,
            users=users,
            spawn_rate=spawn_rate,
            duration_s=duration,
            max_requests=max_requests,
            batch_size=batch_size,
            grpc_weight=grpc_weight,
            http_weight=http_weight,
            think_time_s=think_time,
            repository=repository,
            grpc_url=grpc_url,
            http_url=http_url,
            slo=SLO(p95_ms=slo_p95_ms, max_error_rate=slo_max_error_rate, min_rps=slo_min_rps),
        )
    )
    print_verdict(verdict)
    click.echo(f"reports and verdict.json in {output_dir}")
    if not verdict["passed"]:
        missed = ", ".join(
            f"{c['name']} {c['measured']} (limit {c['limit']})" for c in verdict["checks"] if not c["ok"]
        )
        raise SLOMissedError(f"SLO missed: {missed}")


@cli.command()
@click.option(
    "--repository",
    type=click.Path(path_type=Path),
    default=DEFAULT_REPOSITORY,
    help="Model repository (the served model and any *int8* model folder).",
)
@click.option(
    "--output-dir",
    type=click.Path(path_type=Path),
    default=Path("docs/bench"),
    help="Folder for bench.json and bench.png.",
)
@click.option(
    "--quick",
    is_flag=True,
    help="Short rows and fewer repeats (about 5 minutes on 2 cores); every row is still measured.",
)
@click.option(
    "--seconds",
    default=None,
    type=click.FloatRange(0.5),
    help="Measured seconds per row (default 15, or 3 with --quick).",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=CACHE_DIR / "bench",
    help="Cache for the exported prototype ONNX models (random weights).",
)
@click.option(
    "--skip-prototype",
    is_flag=True,
    help="Leave out the 6-CNN prototype comparison (needs TensorFlow + tf2onnx on first run).",
)
def bench(repository, output_dir, quick, seconds, cache_dir, skip_prototype):
    """Benchmark on this machine: in-process ONNX Runtime vs Triton, batching, batch sizes, INT8, prototype."""
    from face2hbe.loadtest.bench.server import BenchSettings, run_bench

    command = " ".join(
        [
            "face2hbe bench",
            *(["--quick"] if quick else []),
            *([f"--seconds {seconds:g}"] if seconds else []),
            *(["--skip-prototype"] if skip_prototype else []),
            f"--repository {repository}",
            f"--output-dir {output_dir}",
        ]
    )
    result = run_bench(
        BenchSettings(
            repository=repository,
            output_dir=output_dir,
            quick=quick,
            seconds=seconds,
            cache_dir=cache_dir,
            prototype=not skip_prototype,
            command=command,
        )
    )
    click.echo(f"bench.json and bench.png in {output_dir} ({result['wall_s']:.0f} s)")


def main(argv=None) -> int:
    """Console entry point: typed errors become one line on stderr and exit code 1 (2 for a taken port)."""
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
        return getattr(exc, "exit_code", 1)  # 2: a server's port is taken (net.PortInUseError)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
