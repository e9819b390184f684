"""The embedded default server: a real Triton server started from Python (nvidia-pytriton).

PyTriton's Triton has only the Python backend, so the ONNX graph runs through
onnxruntime inside the bound callable. Batching settings, instance count and
the model parameters (labels, thresholds) come from the same config.pbtxt that
NVIDIA's Triton container reads; fields the embedded server cannot honour are
reported at start-up.
"""
from __future__ import annotations

import logging
import os
import signal
import sysconfig
import threading
from dataclasses import dataclass, field
from pathlib import Path

from face2hbe import contract
from face2hbe.errors import ModelRepositoryError

log = logging.getLogger(__name__)


@dataclass
class ServerSettings:
    repository: Path
    host: str = contract.DEFAULT_HOST
    http_port: int = contract.HTTP_PORT
    grpc_port: int = contract.GRPC_PORT
    metrics_port: int = contract.METRICS_PORT
    model_name: str = contract.MODEL_NAME
    model_folder: str | None = None  # repository folder to serve under model_name (None = model_name), e.g. face2hbe_int8
    version: str = contract.MODEL_VERSION
    threads_per_instance: int | None = None  # onnxruntime intra-op threads; None = onnxruntime's default
    instance_count: int | None = None  # None = config.pbtxt's instance_group count
    max_queue_delay_us: int | None = None  # None = config.pbtxt's value; 0 with no_batching
    no_batching: bool = False  # disable the dynamic batcher (benchmarks)
    log_verbose: int = 0
    ignored: list[str] = field(default_factory=list)


def fix_python_stub_environment() -> None:
    """Make Triton's Python-backend stub load this interpreter's libpython.

    Under pyenv (and other non-system Pythons) the stub otherwise picks the
    system libpython and fails with "'_thread.RLock' object has no attribute
    '_recursion_count'". The server process inherits this environment.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir:
        return
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir not in current.split(os.pathsep):
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, current) if p)


def unsupported_fields(config) -> list[str]:
    """config.pbtxt fields that the embedded (Python-backend) server does not apply."""
    ignored = []
    if config.platform and config.platform != "onnxruntime_onnx":
        ignored.append(f"platform {config.platform!r} (runs ONNX through onnxruntime)")
    kinds = {g.kind for g in config.instance_group}
    from tritonclient.grpc import model_config_pb2 as pb

    if pb.ModelInstanceGroup.KIND_GPU in kinds:
        ignored.append("instance_group kind KIND_GPU (runs on the CPU)")
    if config.optimization.execution_accelerators.gpu_execution_accelerator:
        ignored.append("optimization.execution_accelerators (TensorRT/GPU accelerators)")
    if config.optimization.execution_accelerators.cpu_execution_accelerator:
        ignored.append("optimization.execution_accelerators.cpu_execution_accelerator")
    if config.model_warmup:
        ignored.append("model_warmup (warms up by itself with one real-shaped batch)")
    if config.dynamic_batching.default_queue_policy.ByteSize() or config.dynamic_batching.priority_levels:
        ignored.append("dynamic_batching queue policies / priorities")
    return ignored


def _make_infer_function(session):
    import numpy as np
    from pytriton.decorators import batch

    @batch
    def infer(**inputs):
        images = inputs[contract.INPUT_NAME]
        if images.dtype != np.uint8 or images.shape[1:] != contract.INPUT_SHAPE:
            # Triton validates against the bound tensor spec; this guards the callable itself.
            raise ValueError(f"{contract.INPUT_NAME} must be uint8 [-1,{','.join(map(str, contract.INPUT_SHAPE))}]")
        (scores,) = session.run([contract.OUTPUT_NAME], {contract.INPUT_NAME: images})
        return {contract.OUTPUT_NAME: scores.astype(np.float32, copy=False)}

    return infer


def _onnx_session(onnx_path: Path, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])


class EmbeddedServer:
    """Start/stop a PyTriton-hosted Triton serving the repository's model.

    Use as a context manager, or `start()` / `stop()`. `start()` returns once
    the model is loaded and /v2/health/ready answers.
    """

    def __init__(self, settings: ServerSettings):
        from face2hbe.export.repository import labels_and_thresholds, validate_model_dir

        self.settings = settings
        model_dir = Path(settings.repository) / (settings.model_folder or settings.model_name)
        if not model_dir.is_dir():
            raise ModelRepositoryError(f"{model_dir}: model folder not found in repository {settings.repository}")
        self.config, self.onnx_path = validate_model_dir(model_dir, settings.version)
        self.labels, self.thresholds = labels_and_thresholds(self.config)
        self.ignored = unsupported_fields(self.config)
        self._triton = None

    @property
    def access_token(self) -> str | None:
        """Token for Triton's protected endpoints (statistics, repository, ...), or None."""
        return self._triton._security_config.access_token if self._triton else None

    def _model_config(self):
        from pytriton.model_config import DynamicBatcher, ModelConfig

        s, cfg = self.settings, self.config
        if s.no_batching:
            batcher = DynamicBatcher(max_queue_delay_microseconds=0, preferred_batch_size=None)
        else:
            delay = s.max_queue_delay_us if s.max_queue_delay_us is not None else cfg.dynamic_batching.max_queue_delay_microseconds
            preferred = list(cfg.dynamic_batching.preferred_batch_size) or None
            batcher = DynamicBatcher(max_queue_delay_microseconds=delay, preferred_batch_size=preferred)
        return ModelConfig(batching=True, max_batch_size=cfg.max_batch_size, batcher=batcher)

    def _instance_count(self) -> int:
        if self.settings.instance_count:
            return self.settings.instance_count
        return max(1, sum(g.count or 1 for g in self.config.instance_group) or 1)

    def start(self) -> "EmbeddedServer":
        import numpy as np
        from pytriton.model_config import Tensor
        from pytriton.triton import Triton, TritonConfig

        fix_python_stub_environment()
        s = self.settings
        for line in self.ignored:
            log.warning("embedded server ignores config.pbtxt field: %s", line)
        triton_config = TritonConfig(
            http_address=s.host,
            http_port=s.http_port,
            grpc_address=s.host,
            grpc_port=s.grpc_port,
            metrics_address=s.host,
            metrics_port=s.metrics_port,
            log_verbose=s.log_verbose,
            exit_on_error=True,
            strict_readiness=True,
        )
        sessions = [_onnx_session(self.onnx_path, s.threads_per_instance) for _ in range(self._instance_count())]
        # One dry run per session so the first request does not pay onnxruntime's set-up.
        for session in sessions:
            session.run(None, {contract.INPUT_NAME: np.zeros((1, *contract.INPUT_SHAPE), np.uint8)})
        triton = Triton(config=triton_config)
        try:
            triton.bind(
                model_name=s.model_name,
                model_version=int(s.version),
                infer_func=[_make_infer_function(sess) for sess in sessions],
                inputs=[Tensor(name=contract.INPUT_NAME, dtype=np.uint8, shape=contract.INPUT_SHAPE)],
                outputs=[Tensor(name=contract.OUTPUT_NAME, dtype=np.float32, shape=contract.OUTPUT_SHAPE)],
                config=self._model_config(),
                strict=True,
            )
            self._publish_parameters(triton)
            triton.run()
        except Exception:
            triton.stop()
            raise
        self._triton = triton
        log.info(
            "serving %s v%s from %s on %s: http %d, grpc %d, metrics %d (%d instance(s))",
            s.model_name, s.version, self.onnx_path, s.host, s.http_port, s.grpc_port, s.metrics_port, len(sessions),
        )
        return self

    def _publish_parameters(self, triton) -> None:
        """Expose config.pbtxt's parameters (labels, thresholds) in the served model config.

        PyTriton's ModelConfig has no `parameters` field; its generated config
        carries `backend_parameters` as Triton `parameters`, so ours join them.
        """
        params = {k: v.string_value for k, v in self.config.parameters.items()}
        models = [m for m in triton._model_manager.models if m.model_name == self.settings.model_name]
        for model in models:
            original = model._get_triton_model_config

            def with_parameters(original=original):
                generated = original()
                generated.backend_parameters.update(params)
                return generated

            model._get_triton_model_config = with_parameters

    def stop(self) -> None:
        if self._triton is not None:
            self._triton.stop()
            self._triton = None

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Block until SIGINT/SIGTERM, then shut down cleanly."""
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            with self:
                while not stop.wait(0.5):
                    if not self._triton.is_alive():
                        raise RuntimeError("Triton server process died")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
