"""Reading a Triton model repository: config.pbtxt, labels, thresholds and the ONNX graph's interface.

Every stage reads the repository (the server loads it, the client reads the served
config, training warm-starts from a served graph); only export writes it.
config.pbtxt is parsed with Triton's own ModelConfig proto (shipped by tritonclient)
and protobuf's text format, never with regexes.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import contract
from .errors import ModelRepositoryError

LABELS_FILE = "labels.txt"
ATTRIBUTE_LABELS_FILE = "attribute_labels.txt"
CONFIG_FILE = "config.pbtxt"
ONNX_FILE = "model.onnx"

# Which repository folder serves MODEL_NAME at each precision, and the CPU default, chosen by measurement
# (docs/serving.md "CPU default": INT8 at 2.7x fp32's faces/s, test AUC within 0.0006). `face2hbe serve` and
# `face2hbe batch --engine local` run it; NVIDIA's container serves each folder under its own name.
PRECISION_FOLDERS = {"int8": contract.INT8_MODEL_NAME, "fp32": contract.MODEL_NAME}
CPU_PRECISION = "int8"

# Recorded in the ONNX metadata, so a served model says how it was built (warm starts and tests read it).
WORKING_SIZE_KEY = "face2hbe.working_size"
MIRROR_AVERAGE_KEY = "face2hbe.mirror_average"
# A quantized graph's source: the sha256 of the fp32 model.onnx it was quantized from (face2hbe_int8 -> face2hbe).
SOURCE_SHA256_KEY = "face2hbe.source_sha256"


def model_config_pb2():
    """Triton's model_config_pb2 module (from tritonclient), imported on first use."""
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def config_type(datatype: str) -> int:
    """The ModelConfig enum value of a KServe v2 datatype name ("UINT8" -> TYPE_UINT8)."""
    return getattr(model_config_pb2(), contract.config_type(datatype))


def read_config(model_dir: str | Path):
    """Parse `model_dir/config.pbtxt` into Triton's ModelConfig, or raise ModelRepositoryError."""
    from google.protobuf import text_format

    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise ModelRepositoryError(f"{path}: missing model configuration")
    try:
        return text_format.Parse(path.read_text(), model_config_pb2().ModelConfig())
    except text_format.ParseError as exc:
        raise ModelRepositoryError(f"{path}: not a valid Triton model config ({exc})") from None


def config_from_json(config: dict):
    """A served model config as KServe returns it (JSON) -> Triton's ModelConfig message."""
    from google.protobuf import json_format

    return json_format.ParseDict(config, model_config_pb2().ModelConfig(), ignore_unknown_fields=True)


def _split_labels(value: str) -> list[str]:
    return [s.strip() for s in value.split(",") if s.strip()]


def _thresholds_param(params, key: str) -> dict[str, float]:
    if key not in params:
        return {}
    try:
        return {k: float(v) for k, v in json.loads(params[key].string_value).items()}
    except (ValueError, AttributeError) as exc:
        raise ModelRepositoryError(f"model parameter {key!r} is not a JSON object of numbers ({exc})") from None


def output_labels(config) -> dict[str, list[str]]:
    """Each labelled output's label order, in output order: {"scores": [...]} plus {"attributes": [...]} when served.

    Configs written before the attributes output (no `attribute_labels` parameter) give `scores` alone.
    """
    params = config.parameters
    labels = (
        _split_labels(params[contract.PARAM_LABELS].string_value)
        if contract.PARAM_LABELS in params
        else list(contract.LABELS)
    )
    outputs = {contract.OUTPUT_NAME: labels}
    if contract.PARAM_ATTRIBUTE_LABELS in params:
        outputs[contract.ATTRIBUTES_NAME] = _split_labels(params[contract.PARAM_ATTRIBUTE_LABELS].string_value)
    return outputs


def labels_and_thresholds(config) -> tuple[list[str], dict[str, float]]:
    """Every served label (the outputs' labels in output order) and its threshold, from a ModelConfig's parameters.

    Labels without a threshold get contract.DEFAULT_THRESHOLD.
    """
    labels = [label for names in output_labels(config).values() for label in names]
    thresholds = {label: contract.DEFAULT_THRESHOLD for label in labels}
    thresholds.update(_thresholds_param(config.parameters, contract.PARAM_THRESHOLDS))
    return labels, thresholds


def production_labels_in(config) -> list[str] | None:
    """The served labels a ModelConfig publishes as production-grade (`production_labels`), in served order.

    None when the config has no such parameter (written before it, or exported and not yet measured): readers then
    treat every served label as production-grade. A name that is not a served label raises ModelRepositoryError.
    """
    labels, _ = labels_and_thresholds(config)
    params = config.parameters
    if contract.PARAM_PRODUCTION_LABELS not in params:
        return None
    named = _split_labels(params[contract.PARAM_PRODUCTION_LABELS].string_value)
    unknown = [label for label in named if label not in labels]
    if unknown:
        raise ModelRepositoryError(
            f"model parameter {contract.PARAM_PRODUCTION_LABELS!r} names {unknown}, not served labels {labels}"
        )
    return [label for label in labels if label in named]


def onnx_io(path: str | Path) -> dict:
    """Names, numpy element types and shapes (-1 for dynamic) of the ONNX graph's inputs and outputs."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def describe(values):
        return {
            v.name: (
                onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                [d.dim_value if d.dim_value else -1 for d in v.type.tensor_type.shape.dim],
            )
            for v in values
        }

    initializers = {i.name for i in graph.initializer}
    return {
        "inputs": describe([v for v in graph.input if v.name not in initializers]),
        "outputs": describe(graph.output),
    }


def onnx_build_info(path: str | Path) -> dict:
    """working_size (int), mirror_average (bool) and source_sha256 (a quantized graph's fp32 file) from the graph's
    metadata; keys a graph does not record (exported before them) are absent."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    info = {}
    if WORKING_SIZE_KEY in props:
        info["working_size"] = int(props[WORKING_SIZE_KEY])
    if MIRROR_AVERAGE_KEY in props:
        info["mirror_average"] = props[MIRROR_AVERAGE_KEY] == "true"
    if SOURCE_SHA256_KEY in props:
        info["source_sha256"] = props[SOURCE_SHA256_KEY]
    return info


def file_sha256(path: str | Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_quantized_source(model_dir: str | Path, version: str = contract.MODEL_VERSION) -> None:
    """Refuse an INT8 graph that was not quantized from the fp32 graph beside it (face2hbe_int8 vs face2hbe).

    Both files are served as one model at two precisions, with one set of thresholds: an INT8 file left over
    from an earlier fp32 file would serve the old model under the new thresholds. A graph that records no
    source (quantized before the key existed) or has no fp32 sibling passes.
    """
    model_dir = Path(model_dir)
    if model_dir.name != contract.INT8_MODEL_NAME:
        return
    onnx_path = model_dir / version / ONNX_FILE
    source = onnx_build_info(onnx_path).get("source_sha256")
    fp32_path = model_dir.parent / contract.MODEL_NAME / version / ONNX_FILE
    if source and fp32_path.is_file() and (actual := file_sha256(fp32_path)) != source:
        raise ModelRepositoryError(
            f"{onnx_path}: quantized from an fp32 graph with sha256 {source[:12]}, but {fp32_path} is {actual[:12]}: "
            "quantize it again from that file (`face2hbe promote RUN`, or `face2hbe export --format int8`)"
        )


def validate_model_dir(model_dir: str | Path, version: str = contract.MODEL_VERSION):
    """Check a model directory against the contract and its ONNX graph; return (config, onnx path).

    Raises ModelRepositoryError naming the first problem found.
    """
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    onnx_path = model_dir / version / ONNX_FILE
    if not onnx_path.is_file():
        raise ModelRepositoryError(f"{onnx_path}: missing model file")
    if config.name and config.name != model_dir.name:
        raise ModelRepositoryError(
            f"{model_dir / CONFIG_FILE}: name {config.name!r} differs from folder {model_dir.name!r}"
        )
    expected_in = (contract.INPUT_NAME, config_type(contract.INPUT_DTYPE), list(contract.INPUT_SHAPE))
    got_in = [(t.name, t.data_type, list(t.dims)) for t in config.input]
    got_out = [(t.name, t.data_type, list(t.dims)) for t in config.output]
    if got_in != [expected_in]:
        raise ModelRepositoryError(f"{model_dir / CONFIG_FILE}: input {got_in} differs from contract {[expected_in]}")
    # Either the original single output or scores + attributes (both readable; export writes the latter).
    outputs = contract_outputs(attributes=len(got_out) > 1)
    expected_out = [(name, config_type(dtype), list(shape)) for name, (dtype, shape) in outputs.items()]
    if got_out != expected_out:
        raise ModelRepositoryError(f"{model_dir / CONFIG_FILE}: output {got_out} differs from contract {expected_out}")
    try:
        io = onnx_io(onnx_path)
    except Exception as exc:  # onnx raises several unrelated types for a bad file
        raise ModelRepositoryError(f"{onnx_path}: cannot read ONNX graph ({exc})") from None
    want_in = {contract.INPUT_NAME: (contract.numpy_dtype(contract.INPUT_DTYPE), [-1, *contract.INPUT_SHAPE])}
    want_out = {name: (contract.numpy_dtype(dtype), [-1, *shape]) for name, (dtype, shape) in outputs.items()}
    if io["inputs"] != want_in or io["outputs"] != want_out:
        raise ModelRepositoryError(
            f"{onnx_path}: graph io {io} differs from contract inputs {want_in}, outputs {want_out}"
        )
    labels = output_labels(config)
    want_labels = {contract.OUTPUT_NAME: list(contract.LABELS)}
    if len(outputs) > 1:
        want_labels[contract.ATTRIBUTES_NAME] = list(contract.ATTRIBUTE_LABELS)
    if labels != want_labels:
        raise ModelRepositoryError(f"{model_dir / CONFIG_FILE}: labels {labels} differ from contract {want_labels}")
    _check_production_labels(config, model_dir / CONFIG_FILE)
    check_quantized_source(model_dir, version)
    return config, onnx_path


def photo_io() -> tuple[list[tuple], list[tuple]]:
    """The photo model's (name, ModelConfig data type, dims) inputs and outputs, from the contract."""
    inputs = [(contract.PHOTO_INPUT_NAME, config_type(contract.PHOTO_INPUT_DTYPE), list(contract.PHOTO_INPUT_SHAPE))]
    outputs = [
        (contract.BOXES_NAME, config_type(contract.BOXES_DTYPE), list(contract.BOXES_SHAPE)),
        (contract.OUTPUT_NAME, config_type(contract.OUTPUT_DTYPE), list(contract.PHOTO_SCORES_SHAPE)),
        (
            contract.DETECTION_SCORES_NAME,
            config_type(contract.DETECTION_SCORES_DTYPE),
            list(contract.DETECTION_SCORES_SHAPE),
        ),
        (contract.ATTRIBUTES_NAME, config_type(contract.ATTRIBUTES_DTYPE), list(contract.PHOTO_ATTRIBUTES_SHAPE)),
    ]
    return inputs, outputs


def validate_photo_dir(model_dir: str | Path):
    """Check the photo model's folder (config.pbtxt) against the contract; return its config.

    Raises ModelRepositoryError naming the first problem found.
    """
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    where = model_dir / CONFIG_FILE
    if config.name and config.name != model_dir.name:
        raise ModelRepositoryError(f"{where}: name {config.name!r} differs from folder {model_dir.name!r}")
    if config.max_batch_size != 0:
        raise ModelRepositoryError(
            f"{where}: max_batch_size must be 0 (one photo per request), not {config.max_batch_size}"
        )
    want_in, want_out = photo_io()
    got_in = [(t.name, t.data_type, list(t.dims)) for t in config.input]
    got_out = [(t.name, t.data_type, list(t.dims)) for t in config.output]
    if got_in != want_in:
        raise ModelRepositoryError(f"{where}: input {got_in} differs from contract {want_in}")
    if got_out != want_out:
        raise ModelRepositoryError(f"{where}: output {got_out} differs from contract {want_out}")
    labels, _ = labels_and_thresholds(config)
    if labels != list(contract.SERVED_LABELS):
        raise ModelRepositoryError(f"{where}: labels {labels} differ from contract {list(contract.SERVED_LABELS)}")
    _check_production_labels(config, where)
    return config


def _check_production_labels(config, where: Path) -> None:
    try:
        production_labels_in(config)
    except ModelRepositoryError as exc:
        raise ModelRepositoryError(f"{where}: {exc}") from None


def contract_outputs(attributes: bool = True) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The served outputs, name -> (datatype, per-item shape): scores, and attributes unless `attributes` is False."""
    outputs = {contract.OUTPUT_NAME: (contract.OUTPUT_DTYPE, contract.OUTPUT_SHAPE)}
    if attributes:
        outputs[contract.ATTRIBUTES_NAME] = (contract.ATTRIBUTES_DTYPE, contract.ATTRIBUTES_SHAPE)
    return outputs
