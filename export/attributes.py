"""Upgrade a served ONNX graph in place: add the `attributes` output next to `scores`.

The served graphs (fp32 and INT8) compute the 43-wide, mirror-averaged head and slice
its first 3 columns into `scores`. This adds a Gather of the contract's attribute
columns from the same tensor (the input of the Slice that produces `scores`) as a
second graph output. No weight or existing node changes, so `scores` stay
bit-identical; `upgrade_model_dir` checks that with onnxruntime on real crops before
it replaces anything.

    face2hbe export --add-attributes --repository model_repository   # face2hbe and face2hbe_int8
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from face2hbe import contract
from face2hbe.errors import ModelRepositoryError
from face2hbe.graphs import cpu_session
from face2hbe.repository import ONNX_FILE, labels_and_thresholds, production_labels_in, read_config, validate_model_dir

from .repository import BatchingSettings, build_config, write_config

GATHER_NODE = "face2hbe_attributes_gather"
COLUMNS_INITIALIZER = "face2hbe_attribute_columns"
CHECK_RANGE = (7001, 7256)  # CelebA images (1-based) the CLI checks `scores` on: the int8 evaluation range's start


def head_tensor(graph) -> str:
    """Name of the 43-wide tensor that `scores` is sliced from: the data input of the Slice producing `scores`."""
    producer = {out: node for node in graph.node for out in node.output}
    node = producer.get(contract.OUTPUT_NAME)
    # Walk back through Identity nodes (tf2onnx may leave one between the slice and the output).
    while node is not None and node.op_type == "Identity":
        node = producer.get(node.input[0])
    if node is None or node.op_type != "Slice":
        raise ModelRepositoryError(
            f"graph output {contract.OUTPUT_NAME!r} is not produced by a Slice "
            f"({node.op_type if node is not None else 'no node'}): cannot find the head tensor"
        )
    return node.input[0]


def add_attributes_output(model):
    """Add `attributes` = Gather(head, ATTRIBUTE_COLUMNS, axis=1) as the second output of an onnx ModelProto (in place)."""
    import onnx
    from onnx import TensorProto, helper

    graph = model.graph
    if any(o.name == contract.ATTRIBUTES_NAME for o in graph.output):
        raise ModelRepositoryError(f"the graph already has an {contract.ATTRIBUTES_NAME!r} output")
    head = head_tensor(graph)
    graph.initializer.append(
        onnx.numpy_helper.from_array(np.asarray(contract.ATTRIBUTE_COLUMNS, np.int64), COLUMNS_INITIALIZER)
    )
    graph.node.append(
        helper.make_node("Gather", [head, COLUMNS_INITIALIZER], [contract.ATTRIBUTES_NAME], name=GATHER_NODE, axis=1)
    )
    scores = next(o for o in graph.output if o.name == contract.OUTPUT_NAME)
    batch = scores.type.tensor_type.shape.dim[0]
    output = helper.make_tensor_value_info(
        contract.ATTRIBUTES_NAME, TensorProto.FLOAT, [None, *contract.ATTRIBUTES_SHAPE]
    )
    output.type.tensor_type.shape.dim[0].CopyFrom(batch)
    graph.output.append(output)
    return model


def _run(session, names: list[str], crops: np.ndarray, batch: int = contract.MAX_BATCH_SIZE) -> list[np.ndarray]:
    parts = [session.run(names, {contract.INPUT_NAME: crops[i : i + batch]}) for i in range(0, len(crops), batch)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(names))]


@dataclass
class UpgradeCheck:
    model: str
    faces: int
    scores_identical: bool  # bitwise, before vs after
    attributes_match_head: bool  # bitwise, vs the old graph's head tensor columns


def check_upgrade(before: Path, after: Path, crops: np.ndarray, name: str = "") -> UpgradeCheck:
    """Run both graphs on `crops`: `scores` must be bit-identical and `attributes` the head's columns."""
    import onnx

    old = onnx.load(str(before))
    head = head_tensor(old.graph)
    # Expose the old graph's head tensor as an extra output, to compare against the new attributes.
    old.graph.output.append(onnx.helper.make_tensor_value_info(head, onnx.TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.onnx"
        onnx.save(old, str(probe))
        old_scores, old_head = _run(cpu_session(probe), [contract.OUTPUT_NAME, head], crops)
    new_scores, attributes = _run(cpu_session(after), [contract.OUTPUT_NAME, contract.ATTRIBUTES_NAME], crops)
    return UpgradeCheck(
        model=name or str(before),
        faces=len(crops),
        scores_identical=old_scores.dtype == new_scores.dtype
        and np.array_equal(old_scores.view(np.uint32), new_scores.view(np.uint32)),
        attributes_match_head=np.array_equal(attributes, old_head[:, list(contract.ATTRIBUTE_COLUMNS)]),
    )


def upgrade_model_dir(
    model_dir: Path, crops: np.ndarray, batching: BatchingSettings, thresholds: dict[str, float] | None = None
) -> UpgradeCheck:
    """Add the attributes output to `model_dir`'s graph, check it on `crops`, then replace the graph and config.

    Keeps the config's thresholds (plus `thresholds`, e.g. chosen attribute thresholds). Nothing is
    replaced when the check fails (ModelRepositoryError).
    """
    import onnx

    model_dir = Path(model_dir)
    config, onnx_path = validate_model_dir(model_dir)
    if len(crops) == 0:
        raise ModelRepositoryError("no face crops to check the upgraded graph on")
    _, kept = labels_and_thresholds(config)
    kept.update(thresholds or {})
    model = add_attributes_output(onnx.load(str(onnx_path)))
    onnx.checker.check_model(model)
    fd, tmp_name = tempfile.mkstemp(suffix=".onnx", dir=onnx_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        onnx.save(model, str(tmp))
        check = check_upgrade(onnx_path, tmp, crops, model_dir.name)
        if not (check.scores_identical and check.attributes_match_head):
            raise ModelRepositoryError(f"{onnx_path}: upgraded graph fails its check ({check}); nothing replaced")
        os.replace(tmp, onnx_path)
    finally:
        tmp.unlink(missing_ok=True)
    write_config(
        build_config(
            kept,
            batching,
            name=config.name or model_dir.name,
            attributes=True,
            tensorrt=_tensorrt_of(config),
            production=production_labels_in(config),
        ),
        model_dir,
    )
    validate_model_dir(model_dir)
    return check


def _tensorrt_of(config):
    """The TensorRT accelerator settings a config carries (None without one), so a rewrite keeps them."""
    from .repository import TensorRTSettings

    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    trt = next((a for a in accelerators if a.name == "tensorrt"), None)
    if trt is None:
        return None
    params = dict(trt.parameters)
    cache = params.get("trt_engine_cache_path", TensorRTSettings.engine_cache_path)
    suffix = f"/{config.name}"
    return TensorRTSettings(
        precision_mode=params.get("precision_mode", TensorRTSettings.precision_mode),
        max_workspace_size_bytes=int(params.get("max_workspace_size_bytes", TensorRTSettings.max_workspace_size_bytes)),
        engine_cache_path=cache[: -len(suffix)] if cache.endswith(suffix) else cache,
    )


def batching_of(config) -> BatchingSettings:
    """The batching settings a config carries, so an upgrade rewrites it unchanged."""
    return BatchingSettings(
        max_batch_size=int(config.max_batch_size),
        preferred_batch_sizes=tuple(config.dynamic_batching.preferred_batch_size),
        max_queue_delay_us=int(config.dynamic_batching.max_queue_delay_microseconds),
        instance_count=int(config.instance_group[0].count) if config.instance_group else 1,
        instance_kind=config.instance_group[0]
        .DESCRIPTOR.fields_by_name["kind"]
        .enum_type.values_by_number[config.instance_group[0].kind]
        .name
        if config.instance_group
        else "KIND_GPU",
    )


def upgrade_repository(
    repository: Path, crops: np.ndarray, names=(contract.MODEL_NAME, contract.INT8_MODEL_NAME)
) -> list[UpgradeCheck]:
    """Upgrade every model folder in `names` that exists and lacks the attributes output; keep its batching/accelerator."""
    checks = []
    for name in names:
        model_dir = Path(repository) / name
        if not (model_dir / contract.MODEL_VERSION / ONNX_FILE).is_file():
            continue
        config = read_config(model_dir)
        if any(o.name == contract.ATTRIBUTES_NAME for o in config.output):
            continue
        checks.append(upgrade_model_dir(model_dir, crops, batching_of(config)))
    return checks
