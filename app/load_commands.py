"""The commands that load and measure the server: loadtest (Locust, judged against an SLO) and bench (the
serving design choices, measured on this machine: loadtest/bench/server.py)."""

from __future__ import annotations

from pathlib import Path

import click

from face2hbe import contract
from face2hbe.loadtest.runner import SLO, LoadTestSettings
from face2hbe.paths import CACHE_DIR

from .options import DEFAULT_REPOSITORY, default, gather

LOADTEST_OPTIONS = (
    "repository",
    "grpc_url",
    "http_url",
    "users",
    "spawn_rate",
    "duration",
    "max_requests",
    "batch_size",
    "grpc_weight",
    "http_weight",
    "think_time",
    "output_dir",
    "slo_p95_ms",
    "slo_max_error_rate",
    "slo_min_rps",
)


def loadtest_settings(values: dict) -> LoadTestSettings:
    """LoadTestSettings (with its SLO) from loadtest's options."""
    slo = SLO(p95_ms=values["slo_p95_ms"], max_error_rate=values["slo_max_error_rate"], min_rps=values["slo_min_rps"])
    return LoadTestSettings(
        output_dir=values["output_dir"],
        users=values["users"],
        spawn_rate=values["spawn_rate"],
        duration_s=values["duration"],
        max_requests=values["max_requests"],
        batch_size=values["batch_size"],
        grpc_weight=values["grpc_weight"],
        http_weight=values["http_weight"],
        think_time_s=values["think_time"],
        repository=values["repository"],
        grpc_url=values["grpc_url"],
        http_url=values["http_url"],
        slo=slo,
    )


@click.command()
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
    default=default(LoadTestSettings, "users"),
    type=click.IntRange(1, 64),
    help="Concurrent Locust users (at most 64).",
)
@click.option(
    "--spawn-rate",
    default=default(LoadTestSettings, "spawn_rate"),
    type=click.FloatRange(0.1),
    help="Users started per second.",
)
@click.option(
    "--duration",
    default=default(LoadTestSettings, "duration_s"),
    type=click.IntRange(1, 600),
    help="Run time in seconds (at most 600); with --requests, a cap.",
)
@click.option(
    "--requests",
    "max_requests",
    default=default(LoadTestSettings, "max_requests"),
    type=click.IntRange(0),
    help="Stop after this many requests (load by count, the same on any machine); 0 = run for --duration.",
)
@click.option(
    "--batch-size",
    default=default(LoadTestSettings, "batch_size"),
    type=click.IntRange(1, contract.MAX_BATCH_SIZE),
    help="Faces per inference request.",
)
@click.option(
    "--grpc-weight",
    default=default(LoadTestSettings, "grpc_weight"),
    type=click.IntRange(0),
    help="Relative share of gRPC users (0 = none).",
)
@click.option(
    "--http-weight",
    default=default(LoadTestSettings, "http_weight"),
    type=click.IntRange(0),
    help="Relative share of HTTP users (0 = none).",
)
@click.option(
    "--think-time",
    default=default(LoadTestSettings, "think_time_s"),
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
    default=default(SLO, "p95_ms"),
    type=click.FloatRange(0),
    help="SLO: 95th-percentile request latency at most this many ms.",
)
@click.option(
    "--slo-max-error-rate",
    default=default(SLO, "max_error_rate"),
    type=click.FloatRange(0, 1),
    help="SLO: at most this fraction of requests may fail.",
)
@click.option(
    "--slo-min-rps",
    default=default(SLO, "min_rps"),
    type=click.FloatRange(0),
    help="SLO: at least this many requests per second (0 = no floor).",
)
@gather("settings", loadtest_settings, *LOADTEST_OPTIONS)
def loadtest(settings):
    """Load-test the server with Locust (real face crops, gRPC + HTTP users) and judge the SLO; exit 1 when missed."""
    from face2hbe.loadtest.runner import SLOMissedError, print_verdict, run_loadtest

    verdict = run_loadtest(settings)
    print_verdict(verdict)
    click.echo(f"reports and verdict.json in {settings.output_dir}")
    if not verdict["passed"]:
        missed = ", ".join(
            f"{c['name']} {c['measured']} (limit {c['limit']})" for c in verdict["checks"] if not c["ok"]
        )
        raise SLOMissedError(f"SLO missed: {missed}")


@click.command()
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
    from face2hbe.paths import portable

    command = " ".join(
        [
            "face2hbe bench",
            *(["--quick"] if quick else []),
            *([f"--seconds {seconds:g}"] if seconds else []),
            *(["--skip-prototype"] if skip_prototype else []),
            f"--repository {portable(repository)}",
            f"--output-dir {portable(output_dir)}",  # bench.json is shared: no machine paths
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
