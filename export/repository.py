"""The Triton model repository: config.pbtxt, labels file, thresholds as model parameters.

config.pbtxt is written and read with Triton's own ModelConfig proto (shipped by
tritonclient) and protobuf's text format, never with regexes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from face2hbe import contract
from face2hbe.errors import ModelRepositoryError

LABELS_FILE = "labels.txt"
CONFIG_FILE = "config.pbtxt"
ONNX_FILE = "model.onnx"


def _pb():
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


@dataclass
class BatchingSettings:
    """Dynamic batching and instances. The queue delay was chosen by measurement (docs/serving.md)."""

    max_batch_size: int = contract.MAX_BATCH_SIZE
    preferred_batch_sizes: list[int] = field(default_factory=lambda: [8, 16, 32])
    max_queue_delay_us: int = 500  # measured: docs/serving.md (0 lost throughput; 500-5000 within noise)
    instance_count: int = 1
    # KIND_GPU is for NVIDIA's Triton container (docker-compose.yml); KIND_CPU for CPU-only hosts.
    instance_kind: str = "KIND_GPU"


@dataclass
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


def build_config(
    thresholds: dict[str, float],
    batching: BatchingSettings = BatchingSettings(),
    platform: str = "onnxruntime_onnx",
    *,
    name: str = contract.MODEL_NAME,
    tensorrt: TensorRTSettings | None = TensorRTSettings(),
    warmup_batch_sizes: tuple[int, ...] = WARMUP_BATCH_SIZES,
):
    """A ModelConfig message for the served model, following the contract.

    GPU instances get the TensorRT FP16 accelerator (unless `tensorrt` is None);
    CPU instances (batching.instance_kind == "KIND_CPU") never do.
    """
    pb = _pb()
    config = pb.ModelConfig(name=name, platform=platform, max_batch_size=batching.max_batch_size)
    config.input.add(name=contract.INPUT_NAME, data_type=pb.TYPE_UINT8, dims=list(contract.INPUT_SHAPE))
    config.output.add(
        name=contract.OUTPUT_NAME, data_type=pb.TYPE_FP32, dims=list(contract.OUTPUT_SHAPE), label_filename=LABELS_FILE
    )
    config.dynamic_batching.preferred_batch_size.extend(b for b in batching.preferred_batch_sizes if b <= batching.max_batch_size)
    config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
    config.instance_group.add(count=batching.instance_count, kind=getattr(pb.ModelInstanceGroup, batching.instance_kind))
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
        sample.data_type = pb.TYPE_UINT8
        sample.dims.extend(contract.INPUT_SHAPE)
        sample.zero_data = True
    config.parameters[contract.PARAM_LABELS].string_value = ",".join(contract.LABELS)
    config.parameters[contract.PARAM_THRESHOLDS].string_value = json.dumps(
        {label: round(float(thresholds[label]), 6) for label in contract.LABELS}
    )
    return config


def cpu_batching(batching: BatchingSettings = BatchingSettings()) -> BatchingSettings:
    """The same batching on CPU instances (no TensorRT): the config for CPU-only hosts."""
    return replace(batching, instance_kind="KIND_CPU")


def rewrite_config(model_dir: str | Path, batching: BatchingSettings = BatchingSettings(), *, name: str | None = None,
                   thresholds: dict[str, float] | None = None) -> Path:
    """Regenerate `model_dir/config.pbtxt` from code, keeping the thresholds it (or `thresholds`) carries."""
    model_dir = Path(model_dir)
    if thresholds is None:
        _, thresholds = labels_and_thresholds(read_config(model_dir))
    return write_config(build_config(thresholds, batching, name=name or model_dir.name), model_dir)


def write_config(config, model_dir: Path) -> Path:
    from google.protobuf import text_format

    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / CONFIG_FILE
    path.write_text(text_format.MessageToString(config))
    (model_dir / LABELS_FILE).write_text("".join(f"{label}\n" for label in contract.LABELS))
    return path


def read_config(model_dir: str | Path):
    """Parse `model_dir/config.pbtxt` into Triton's ModelConfig, or raise ModelRepositoryError."""
    from google.protobuf import text_format

    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise ModelRepositoryError(f"{path}: missing model configuration")
    try:
        return text_format.Parse(path.read_text(), _pb().ModelConfig())
    except text_format.ParseError as exc:
        raise ModelRepositoryError(f"{path}: not a valid Triton model config ({exc})") from None


def labels_and_thresholds(config) -> tuple[list[str], dict[str, float]]:
    """Label order and per-label thresholds from a ModelConfig's parameters."""
    params = config.parameters
    if contract.PARAM_LABELS in params:
        labels = [s.strip() for s in params[contract.PARAM_LABELS].string_value.split(",") if s.strip()]
    else:
        labels = list(contract.LABELS)
    thresholds = {label: contract.DEFAULT_THRESHOLD for label in labels}
    if contract.PARAM_THRESHOLDS in params:
        try:
            thresholds.update({k: float(v) for k, v in json.loads(params[contract.PARAM_THRESHOLDS].string_value).items()})
        except (ValueError, AttributeError) as exc:
            raise ModelRepositoryError(f"model parameter {contract.PARAM_THRESHOLDS!r} is not a JSON object of numbers ({exc})") from None
    return labels, thresholds


def validate_model_dir(model_dir: str | Path, version: str = contract.MODEL_VERSION):
    """Check a model directory against the contract and its ONNX graph; return (config, onnx path).

    Raises ModelRepositoryError naming the first problem found.
    """
    pb = _pb()
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    onnx_path = model_dir / version / ONNX_FILE
    if not onnx_path.is_file():
        raise ModelRepositoryError(f"{onnx_path}: missing model file")
    if config.name and config.name != model_dir.name:
        raise ModelRepositoryError(f"{model_dir / CONFIG_FILE}: name {config.name!r} differs from folder {model_dir.name!r}")
    expected_in = (contract.INPUT_NAME, pb.TYPE_UINT8, list(contract.INPUT_SHAPE))
    expected_out = (contract.OUTPUT_NAME, pb.TYPE_FP32, list(contract.OUTPUT_SHAPE))
    got_in = [(t.name, t.data_type, list(t.dims)) for t in config.input]
    got_out = [(t.name, t.data_type, list(t.dims)) for t in config.output]
    if got_in != [expected_in]:
        raise ModelRepositoryError(f"{model_dir / CONFIG_FILE}: input {got_in} differs from contract {[expected_in]}")
    if got_out != [expected_out]:
        raise ModelRepositoryError(f"{model_dir / CONFIG_FILE}: output {got_out} differs from contract {[expected_out]}")
    from .onnx_export import onnx_io

    try:
        io = onnx_io(onnx_path)
    except Exception as exc:  # onnx raises several unrelated types for a bad file
        raise ModelRepositoryError(f"{onnx_path}: cannot read ONNX graph ({exc})") from None
    want_in = {contract.INPUT_NAME: ("uint8", [-1, *contract.INPUT_SHAPE])}
    want_out = {contract.OUTPUT_NAME: ("float32", [-1, *contract.OUTPUT_SHAPE])}
    if io["inputs"] != want_in or io["outputs"] != want_out:
        raise ModelRepositoryError(f"{onnx_path}: graph io {io} differs from contract inputs {want_in}, outputs {want_out}")
    labels, _ = labels_and_thresholds(config)
    if labels != list(contract.LABELS):
        raise ModelRepositoryError(f"{model_dir / CONFIG_FILE}: labels {labels} differ from contract {list(contract.LABELS)}")
    return config, onnx_path
