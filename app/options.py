"""What the commands share: settings dataclasses' defaults as option defaults, `gather` (options whose values
reach a command as one settings object, so no command takes one argument per option), and the option sets of
several commands (the server's, the client's, detection's).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import click

from face2hbe import contract

DEFAULT_REPOSITORY = "model_repository"


def default(settings_class, name: str):
    """A settings dataclass field's default: the CLI states no default of its own."""
    field = {f.name: f for f in dataclasses.fields(settings_class)}[name]
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def gather(name: str, build, *option_names: str):
    """Decorate a command (below its options): these options' values leave its arguments and `build(values)` (a dict
    by option name) comes in as argument `name` instead. The command's settings objects are built in one place."""

    def decorate(f):
        @functools.wraps(f)
        def command(*args, **kwargs):
            kwargs[name] = build({option: kwargs.pop(option) for option in option_names})
            return f(*args, **kwargs)

        command.__gathered__ = (name, option_names)  # tests/test_cli.py checks every name is an option
        return command

    return decorate


def server_options(f):
    """The options every command that starts a server shares (`serve`); server_settings() reads them."""
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


def server_default(name: str, choices: bool = False):
    from face2hbe.repository import PRECISION_FOLDERS
    from face2hbe.serving.embedded import ServerSettings

    return tuple(PRECISION_FOLDERS) if choices else default(ServerSettings, name)


def graphs():
    from face2hbe.graphs import GRAPHS

    return GRAPHS


def server_settings(repository, host, http_port, grpc_port, metrics_port, threads, instances, **extra):
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


def photo_options(*names):
    """The options `recommend` and `batch` share, by name; every default comes from a settings dataclass."""
    import inspect

    from face2hbe.client.inference import ClientSettings
    from face2hbe.client.recommend import Limits, Recommender
    from face2hbe.detection import DETECTOR_MODELS, DetectorSettings

    D, L, C = (
        (lambda n: default(DetectorSettings, n)),
        (lambda n: default(Limits, n)),
        (lambda n: default(ClientSettings, n)),
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


def detect_modes():
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


def detection_settings(values: dict):
    """(DetectorSettings, Limits) from the detection options (DETECTION_OPTIONS, and image_timeout where given)."""
    from face2hbe.client.recommend import Limits
    from face2hbe.detection import DetectorSettings, require_detector

    require_detector(values["detector"])  # a missing package fails here, in one line, before any worker starts
    detector = DetectorSettings(
        model=values["detector"],
        upsample=values["upsample"],
        retry_upsample=values["retry_upsample"],
        min_score=values["min_score"],
        max_side=values["max_side"],
        min_face=values["min_face"],
    )
    limits = {
        "max_pixels": values["max_pixels"],
        "max_file_bytes": int(values["max_file_mb"] * 1024 * 1024),
        "max_faces": values["max_faces"],
    }
    if values.get("image_timeout") is not None:
        limits["image_timeout_s"] = values["image_timeout"]
    return detector, Limits(**limits)


CLIENT_OPTIONS = ("url", "protocol", "in_flight", "timeout", "retries", "wait_ready")


def client_settings(values: dict):
    """ClientSettings from the client options (CLIENT_OPTIONS; gRPC when no protocol option is given)."""
    from face2hbe.client.inference import ClientSettings

    return ClientSettings(
        url=values["url"],
        protocol=values.get("protocol", "grpc"),
        timeout_s=values["timeout"],
        retries=values["retries"],
        max_in_flight=values["in_flight"],
        wait_ready_s=values["wait_ready"],
    )


def data_option(kind: str, help: str, **extra):
    """--KIND for a labelled data folder (celeba, lfw, ...) at DATA_DIR/KIND by default."""
    from face2hbe.paths import DATA_DIR

    return click.option(f"--{kind}", type=click.Path(path_type=Path), default=DATA_DIR / kind, help=help, **extra)


def cache_dir_option(f):
    """--cache-dir for detected training-data crops."""
    from face2hbe.paths import CACHE_DIR

    return click.option(
        "--cache-dir",
        type=click.Path(path_type=Path),
        default=CACHE_DIR,
        help="Cache for detected training-data crops (never users' photos).",
    )(f)
