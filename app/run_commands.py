"""The commands that run the model: serve (the Triton server), recommend (photos -> products) and batch (the same
on Ray Data, for many photos)."""

from __future__ import annotations

from pathlib import Path

import click

from face2hbe import contract
from face2hbe.errors import Face2hbeError

from .options import (
    CLIENT_OPTIONS,
    DEFAULT_REPOSITORY,
    DETECTION_OPTIONS,
    client_settings,
    default,
    detect_modes,
    detection_settings,
    gather,
    graphs,
    photo_options,
    server_default,
    server_options,
    server_settings,
)

# batch's options, all of which go into BatchSettings (the client's and detection's too)
BATCH_OPTIONS = (
    "output",
    "engine",
    "url",
    "repository",
    "jsonl",
    "address",
    "cpu_workers",
    "scorers",
    "in_flight",
    "images_per_task",
    "rows_per_part",
    "local_cpus",
    "catalog",
    *DETECTION_OPTIONS,
    "timeout",
    "retries",
    "wait_ready",
    "skus_per_face",
    "progress",
)


def batch_settings(values: dict):
    """BatchSettings from batch's options."""
    from face2hbe.client.batch import BatchSettings

    detector, limits = detection_settings(values)
    return BatchSettings(
        output=values["output"],
        engine=values["engine"],
        repository=values["repository"],
        catalog=values["catalog"],
        jsonl=values["jsonl"],
        address=values["address"],
        client=client_settings(values),
        detector=detector,
        limits=limits,
        skus_per_face=values["skus_per_face"],
        cpu_workers=values["cpu_workers"],
        scorers=values["scorers"],
        images_per_task=values["images_per_task"],
        rows_per_part=values["rows_per_part"],
        num_cpus=values["local_cpus"],
        progress=values["progress"],
    )


@click.command()
@server_options
@click.option(
    "--precision",
    type=click.Choice(server_default("precision", choices=True)),
    default=server_default("precision"),
    show_default=True,
    help="Which file serves face2hbe on this CPU server: int8 (<repository>/face2hbe_int8) or fp32 (<repository>/face2hbe). "
    "Clients call face2hbe either way. Chosen by measurement: docs/serving.md, CPU default.",
)
@click.option(
    "--graph",
    type=click.Choice(graphs()),
    default=server_default("graph"),
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
        server_settings(
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


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@photo_options("url", "protocol")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=Path("results.jsonl"),
    help="JSONL file, one record per image, written as each image finishes.",
)
@click.option("--resume", is_flag=True, help="Keep records already in --output and skip those images.")
@photo_options("catalog", *DETECTION_OPTIONS, "image_timeout")
@click.option(
    "--detect",
    type=click.Choice(detect_modes()),
    default=detect_modes()[0],
    help="Where faces are found: local (detection threads here, crops sent to the face model) or server (photo bytes "
    "sent to the photo model, face2hbe_photo; the detector options then are the server's).",
)
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(1),
    help="Detection threads (default: the CPUs this process may use).",
)
@photo_options("in_flight", "timeout", "retries", "wait_ready", "skus_per_face")
@click.option("--progress/--no-progress", default=True, help="Progress bar with faces/s.")
@click.option(
    "--annotate",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Also write a JPEG copy of each photo to DIR (same names) with face boxes, labels, scores and products.",
)
@gather("client", client_settings, *CLIENT_OPTIONS)
@gather("detection", detection_settings, *DETECTION_OPTIONS, "image_timeout")
def recommend(paths, output, resume, catalog, detect, workers, skus_per_face, progress, annotate, client, detection):
    """Recommend products for the faces in PATHS (image files; a folder is one profile)."""
    from face2hbe.client.recommend import Recommender
    from face2hbe.client.report import print_report

    detector, limits = detection
    rec = Recommender(
        catalog=catalog,
        detector=detector,
        limits=limits,
        skus_per_face=skus_per_face,
        workers=workers,
        client=client,
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


def batch_default(name: str):
    from face2hbe.client.batch import BatchSettings

    return default(BatchSettings, name)


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--output",
    default=batch_default("output"),
    help="Folder (or a pyarrow filesystem URI, e.g. s3://bucket/prefix): results/part-*.parquet (one row per image, "
    "faces nested) and profiles.parquet. Rerun to resume.",
)
@click.option(
    "--engine",
    type=click.Choice(["triton", "local"]),
    default=batch_default("engine"),
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
    default=batch_default("scorers"),
    help="Scoring actors (per Triton replica; see docs/batch.md).",
)
@click.option("--in-flight", default=4, type=click.IntRange(1), help="Batches (requests) in flight per scoring actor.")
@click.option(
    "--images-per-task",
    default=batch_default("images_per_task"),
    type=click.IntRange(1),
    help="Images per detection task and per scoring call.",
)
@click.option(
    "--rows-per-part",
    default=batch_default("rows_per_part"),
    type=click.IntRange(1),
    help="Images per Parquet part file (at most).",
)
@click.option(
    "--local-cpus",
    type=click.IntRange(1),
    default=None,
    help="CPUs of the local Ray (default: the CPUs this process may use).",
)
@photo_options("catalog", *DETECTION_OPTIONS, "timeout", "retries", "wait_ready", "skus_per_face")
@click.option(
    "--progress/--no-progress",
    default=True,
    help="Progress: Ray Data's bars on a terminal; elsewhere (a log, a pipe) one log line per stage.",
)
@gather("settings", batch_settings, *BATCH_OPTIONS)
def batch(paths, settings):
    """Batch job on Ray Data: PATHS (folders, image files, .txt lists of paths, Parquet/CSV manifests with a
    `path` column) -> Parquet results. Exit 1 when any output row is an error."""
    from face2hbe.client.batch import read_output, record_from_row, run_batch
    from face2hbe.client.catalog import load_catalog
    from face2hbe.client.report import batch_rows, print_report

    summary = run_batch(paths, settings)
    output = settings.output
    records = [record_from_row(r) for r in read_output(output)] if summary.output_rows <= 50 else []  # no image table
    print_report(output, summary, load_catalog(settings.catalog), records=records, extra_rows=batch_rows(summary))
    if summary.output_errors:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(summary.output_errors.items()))
        raise Face2hbeError(
            f"{sum(summary.output_errors.values())} of {summary.output_rows} output rows are errors ({kinds}); "
            "rerun with the same --output to retry server and read errors"
        )
