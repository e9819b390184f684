"""A TensorRT plan of the served graph (FP16, batch 1..max) for Triton's tensorrt_plan backend.

Plans are tied to the GPU model and TensorRT version that built them: build inside
the same Triton container release that serves them (docker-compose.yml), e.g.
`docker compose run --rm triton ...`, or let Triton's onnxruntime backend build and
cache engines itself (config.pbtxt's TensorRT accelerator) — the default path.
"""

from __future__ import annotations

from pathlib import Path

from face2hbe import contract
from face2hbe.errors import Face2hbeError, ModelRepositoryError
from face2hbe.repository import labels_and_thresholds, production_labels_in, read_config, validate_model_dir

from .repository import BatchingSettings, build_config, graph_has_attributes, write_config

TRT_MODEL_NAME = f"{contract.MODEL_NAME}_trt"
PLAN_FILE = "model.plan"


class TensorRTUnavailableError(Face2hbeError):
    """TensorRT or a CUDA GPU is not available on this machine."""


def load_tensorrt():
    """The `tensorrt` module with a usable GPU, or TensorRTUnavailableError saying which is missing."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailableError(
            f"TensorRT export needs the `tensorrt` Python package and an NVIDIA GPU ({exc}); "
            "run it inside the Triton container, or serve the ONNX model with the TensorRT accelerator instead"
        ) from None
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except Exception as exc:  # TensorRT raises plain RuntimeError/TypeError when CUDA has no device
        builder = None
        reason = str(exc) or type(exc).__name__
    else:
        reason = "no CUDA device"
    if builder is None:
        raise TensorRTUnavailableError(f"TensorRT {trt.__version__} is installed but cannot use a GPU here ({reason})")
    return trt, builder


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    max_batch: int = contract.MAX_BATCH_SIZE,
    opt_batch: int = 8,
    fp16: bool = True,
    workspace_bytes: int = 1 << 30,
) -> Path:
    """Parse the ONNX graph and serialise an engine with one profile over batch 1..max_batch."""
    trt, builder = load_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelRepositoryError(f"{onnx_path}: TensorRT cannot parse the graph ({errors})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    shape = contract.INPUT_SHAPE
    profile.set_shape(contract.INPUT_NAME, (1, *shape), (min(opt_batch, max_batch), *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelRepositoryError(f"{onnx_path}: TensorRT failed to build an engine (see the log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(plan))
    return plan_path


def export_tensorrt(repository: Path, batching: BatchingSettings = BatchingSettings()) -> Path:
    """<repository>/face2hbe/1/model.onnx -> <repository>/face2hbe_trt/{config.pbtxt, labels files, 1/model.plan}.

    The plan has the graph's outputs (scores, and attributes when the graph has them); the config lists the same.
    """
    repository = Path(repository)
    source_dir = repository / contract.MODEL_NAME
    _, onnx_path = validate_model_dir(source_dir)
    load_tensorrt()  # fail fast, before anything is written
    source_config = read_config(source_dir)
    _, thresholds = labels_and_thresholds(source_config)
    target_dir = repository / TRT_MODEL_NAME
    build_plan(onnx_path, target_dir / contract.MODEL_VERSION / PLAN_FILE, max_batch=batching.max_batch_size)
    # The plan already is TensorRT: no accelerator on top; the warm-up still matters.
    config = build_config(
        thresholds,
        batching,
        platform="tensorrt_plan",
        name=TRT_MODEL_NAME,
        tensorrt=None,
        attributes=graph_has_attributes(source_dir),
        production=production_labels_in(source_config),
    )
    write_config(config, target_dir)
    read_config(target_dir)  # parses with Triton's proto
    return target_dir
