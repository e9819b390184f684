"""Writing the Triton model repository: config.pbtxt, labels file, thresholds and production labels as model parameters.

config.pbtxt is built with Triton's own ModelConfig proto (shipped by tritonclient) and
written with protobuf's text format; reading it is core code (face2hbe.repository).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from face2hbe import contract
from face2hbe.errors import ModelRepositoryError
from face2hbe.photo import PHOTO_INSTANCE_COUNT, PhotoSettings
from face2hbe.repository import (
    ATTRIBUTE_LABELS_FILE,
    CONFIG_FILE,
    LABELS_FILE,
    ONNX_FILE,
    config_type,
    contract_outputs,
    labels_and_thresholds,
    model_config_pb2,
    onnx_io,
    photo_io,
    production_labels_in,
    read_config,
    validate_photo_dir,
)

__all__ = [
    "ATTRIBUTE_LABELS_FILE",
    "CONFIG_FILE",
    "LABELS_FILE",
    "ONNX_FILE",
    "BatchingSettings",
    "TensorRTSettings",
    "build_config",
    "build_photo_config",
    "cpu_batching",
    "production_labels",
    "rewrite_config",
    "write_config",
    "write_photo_config",
]


@dataclass(frozen=True)
class BatchingSettings:
    """Dynamic batching and instances. The queue delay was chosen by measurement (docs/serving.md)."""

    max_batch_size: int = contract.MAX_BATCH_SIZE
    preferred_batch_sizes: tuple[int, ...] = (8, 16, 32)
    max_queue_delay_us: int = 500  # measured: docs/serving.md (0 lost throughput; 500-5000 within noise)
    instance_count: int = 1
    # KIND_GPU is for NVIDIA's Triton container (docker-compose.yml); KIND_CPU for CPU-only hosts.
    instance_kind: str = "KIND_GPU"


@dataclass(frozen=True)
class TensorRTSettings:
    """onnxruntime's TensorRT execution provider inside Triton (GPU instances only)."""

    precision_mode: str = "FP16"
    max_workspace_size_bytes: int = 1 << 30
    # Must be writable inside the container: the repository is mounted read-only, so the
    # engines go to a volume (docker-compose.yml mounts trt-cache at /trt_cache).
    engine_cache_path: str = "/trt_cache"


# TensorRT builds engines per shape profile on first use; warming these batch sizes at load
# time moves that cost out of the first requests. 1 = single face, 8 = typical photo batch, 32 = max.
WARMUP_BATCH_SIZES = (1, 8, 32)


def production_labels(aucs: dict[str, float | None], bar: float = contract.PRODUCTION_AUC_BAR) -> list[str]:
    """The served labels (served order) whose measured ROC AUC (CelebA test split) is at least `bar`: the
    `production_labels` parameter. A label without a measurement (absent, None, NaN) is not production-grade."""
    return [
        label for label in contract.SERVED_LABELS if (auc := aucs.get(label)) is not None and auc == auc and auc >= bar
    ]


def build_config(
    thresholds: dict[str, float],
    batching: BatchingSettings = BatchingSettings(),
    platform: str = "onnxruntime_onnx",
    *,
    name: str = contract.MODEL_NAME,
    tensorrt: TensorRTSettings | None = TensorRTSettings(),
    warmup_batch_sizes: tuple[int, ...] = WARMUP_BATCH_SIZES,
    attributes: bool = True,
    production: list[str] | None = None,
):
    """A ModelConfig message for the served model, following the contract.

    Outputs: `scores` and (unless `attributes` is False, for graphs exported before it) `attributes`.
    `thresholds` should cover every served label; an attribute label it lacks gets
    contract.DEFAULT_THRESHOLD. `production` (see production_labels) becomes the `production_labels`
    parameter; None writes none (every label then counts as production-grade until it is measured).
    GPU instances get the TensorRT FP16 accelerator (unless
    `tensorrt` is None); CPU instances (batching.instance_kind == "KIND_CPU") never do.
    """
    pb = model_config_pb2()
    config = pb.ModelConfig(name=name, platform=platform, max_batch_size=batching.max_batch_size)
    config.input.add(
        name=contract.INPUT_NAME, data_type=config_type(contract.INPUT_DTYPE), dims=list(contract.INPUT_SHAPE)
    )
    label_files = {contract.OUTPUT_NAME: LABELS_FILE, contract.ATTRIBUTES_NAME: ATTRIBUTE_LABELS_FILE}
    for output, (dtype, shape) in contract_outputs(attributes).items():
        config.output.add(
            name=output, data_type=config_type(dtype), dims=list(shape), label_filename=label_files[output]
        )
    config.dynamic_batching.preferred_batch_size.extend(
        b for b in batching.preferred_batch_sizes if b <= batching.max_batch_size
    )
    config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
    config.instance_group.add(
        count=batching.instance_count, kind=getattr(pb.ModelInstanceGroup, batching.instance_kind)
    )
    if tensorrt is not None and batching.instance_kind == "KIND_GPU":
        trt = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        trt.parameters["precision_mode"] = tensorrt.precision_mode
        trt.parameters["max_workspace_size_bytes"] = str(tensorrt.max_workspace_size_bytes)
        trt.parameters["trt_engine_cache_enable"] = "1"
        trt.parameters["trt_engine_cache_path"] = f"{tensorrt.engine_cache_path.rstrip('/')}/{name}"
    for size in warmup_batch_sizes:
        if size > batching.max_batch_size:
            continue
        warmup = config.model_warmup.add(name=f"zeros_batch_{size}", batch_size=size, count=1)
        sample = warmup.inputs[contract.INPUT_NAME]
        sample.data_type = config_type(contract.INPUT_DTYPE)
        sample.dims.extend(contract.INPUT_SHAPE)
        sample.zero_data = True
    config.parameters[contract.PARAM_LABELS].string_value = ",".join(contract.LABELS)
    served = list(contract.LABELS) + (list(contract.ATTRIBUTE_LABELS) if attributes else [])
    # One `thresholds` object for every served label (scores' and attributes'); a client reads the ones it needs.
    config.parameters[contract.PARAM_THRESHOLDS].string_value = json.dumps(
        {
            label: round(
                float(
                    thresholds.get(label, contract.DEFAULT_THRESHOLD)
                    if label not in contract.LABELS
                    else thresholds[label]
                ),
                6,
            )
            for label in served
        }
    )
    if attributes:
        config.parameters[contract.PARAM_ATTRIBUTE_LABELS].string_value = ",".join(contract.ATTRIBUTE_LABELS)
    if production is not None:
        unknown = sorted(set(production) - set(served))
        if unknown:
            raise ModelRepositoryError(f"production labels {unknown} are not served labels {served}")
        config.parameters[contract.PARAM_PRODUCTION_LABELS].string_value = ",".join(
            label for label in served if label in production
        )
    return config


def graph_has_attributes(model_dir: str | Path, version: str = contract.MODEL_VERSION) -> bool:
    """Whether `model_dir`'s ONNX graph has the attributes output (True when there is no graph yet)."""
    path = Path(model_dir) / version / ONNX_FILE
    return not path.is_file() or contract.ATTRIBUTES_NAME in onnx_io(path)["outputs"]


def cpu_batching(batching: BatchingSettings = BatchingSettings()) -> BatchingSettings:
    """The same batching on CPU instances (no TensorRT): the config for CPU-only hosts."""
    return replace(batching, instance_kind="KIND_CPU")


def rewrite_config(
    model_dir: str | Path,
    batching: BatchingSettings = BatchingSettings(),
    *,
    name: str | None = None,
    thresholds: dict[str, float] | None = None,
    production: list[str] | None = None,
) -> Path:
    """Regenerate `model_dir/config.pbtxt` from code, keeping the thresholds and production labels it carries
    (unless `thresholds` / `production` are given).

    The outputs follow the folder's ONNX graph (with or without `attributes`).
    """
    model_dir = Path(model_dir)
    old = read_config(model_dir) if thresholds is None or (model_dir / CONFIG_FILE).is_file() else None
    if thresholds is None:
        _, thresholds = labels_and_thresholds(old)
    if production is None and old is not None:
        production = production_labels_in(old)
    config = build_config(
        thresholds,
        batching,
        name=name or model_dir.name,
        attributes=graph_has_attributes(model_dir),
        production=production,
    )
    return write_config(config, model_dir)


def write_config(config, model_dir: Path) -> Path:
    from google.protobuf import text_format

    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / CONFIG_FILE
    path.write_text(text_format.MessageToString(config))
    (model_dir / LABELS_FILE).write_text("".join(f"{label}\n" for label in contract.LABELS))
    attribute_file = model_dir / ATTRIBUTE_LABELS_FILE
    if any(o.name == contract.ATTRIBUTES_NAME for o in config.output):
        attribute_file.write_text("".join(f"{label}\n" for label in contract.ATTRIBUTE_LABELS))
    else:
        attribute_file.unlink(missing_ok=True)
    return path


def build_photo_config(
    model_config, settings: PhotoSettings = PhotoSettings(), instance_count: int = PHOTO_INSTANCE_COUNT
):
    """The photo model's ModelConfig (Triton's Python backend, not batched), derived from the face2hbe model's `model_config`.

    Labels, thresholds and production labels are the face2hbe model's parameters, copied; the photo model's limits
    (max_faces, max_pixels, max_file_bytes) join them. Instances run on the CPU: they decode and
    detect, and the face2hbe model they call holds the GPU.
    """
    pb = model_config_pb2()
    config = pb.ModelConfig(name=contract.PHOTO_MODEL_NAME, backend="python", max_batch_size=0)
    inputs, outputs = photo_io()
    label_files = {contract.OUTPUT_NAME: LABELS_FILE, contract.ATTRIBUTES_NAME: ATTRIBUTE_LABELS_FILE}
    for name, data_type, dims in inputs:
        config.input.add(name=name, data_type=data_type, dims=dims)
    for name, data_type, dims in outputs:
        config.output.add(name=name, data_type=data_type, dims=dims, label_filename=label_files.get(name, ""))
    config.instance_group.add(count=instance_count, kind=pb.ModelInstanceGroup.KIND_CPU)
    for key in (contract.PARAM_LABELS, contract.PARAM_ATTRIBUTE_LABELS, contract.PARAM_THRESHOLDS):
        if key not in model_config.parameters:
            raise ModelRepositoryError(
                f"{contract.MODEL_NAME}'s config has no {key!r} parameter: export its graph with attributes first"
            )
        config.parameters[key].string_value = model_config.parameters[key].string_value
    if contract.PARAM_PRODUCTION_LABELS in model_config.parameters:
        config.parameters[contract.PARAM_PRODUCTION_LABELS].string_value = model_config.parameters[
            contract.PARAM_PRODUCTION_LABELS
        ].string_value
    for key, value in settings.parameters().items():
        config.parameters[key].string_value = value
    return config


def write_photo_config(
    repository: str | Path, settings: PhotoSettings = PhotoSettings(), instance_count: int = PHOTO_INSTANCE_COUNT
) -> Path:
    """(Re)write `<repository>/face2hbe_photo/config.pbtxt` and labels.txt from `<repository>/face2hbe`'s config.

    Its 1/model.py (the Triton Python-backend adapter) is source, kept in the committed repository.
    """
    repository = Path(repository)
    model_dir = repository / contract.PHOTO_MODEL_NAME
    path = write_config(
        build_photo_config(read_config(repository / contract.MODEL_NAME), settings, instance_count), model_dir
    )
    validate_photo_dir(model_dir)
    return path
