"""The Triton model repository: config.pbtxt, labels file, thresholds as model parameters.

config.pbtxt is written and read with Triton's own ModelConfig proto (shipped by
tritonclient) and protobuf's text format, never with regexes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
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
    max_batch_size: int = contract.MAX_BATCH_SIZE
    preferred_batch_sizes: list[int] = field(default_factory=lambda: [8, 16, 32])
    max_queue_delay_us: int = 2000
    instance_count: int = 1
    instance_kind: str = "KIND_CPU"


def build_config(thresholds: dict[str, float], batching: BatchingSettings = BatchingSettings(), platform: str = "onnxruntime_onnx"):
    """A ModelConfig message for the served model, following the contract."""
    pb = _pb()
    config = pb.ModelConfig(name=contract.MODEL_NAME, platform=platform, max_batch_size=batching.max_batch_size)
    config.input.add(name=contract.INPUT_NAME, data_type=pb.TYPE_UINT8, dims=list(contract.INPUT_SHAPE))
    config.output.add(
        name=contract.OUTPUT_NAME, data_type=pb.TYPE_FP32, dims=list(contract.OUTPUT_SHAPE), label_filename=LABELS_FILE
    )
    config.dynamic_batching.preferred_batch_size.extend(batching.preferred_batch_sizes)
    config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
    config.instance_group.add(count=batching.instance_count, kind=getattr(pb.ModelInstanceGroup, batching.instance_kind))
    config.parameters[contract.PARAM_LABELS].string_value = ",".join(contract.LABELS)
    config.parameters[contract.PARAM_THRESHOLDS].string_value = json.dumps(
        {label: round(float(thresholds[label]), 6) for label in contract.LABELS}
    )
    return config


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
