"""The embedded default server: a real Triton server started from Python (nvidia-pytriton).

PyTriton's Triton has only the Python backend, so the ONNX graph runs through
onnxruntime inside the bound callable. Batching settings, instance count and
the model parameters (labels, thresholds) come from the same config.pbtxt that
NVIDIA's Triton container reads; fields the embedded server cannot honour are
reported at start-up.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sysconfig
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from face2hbe import contract
from face2hbe.errors import Face2hbeError, ModelRepositoryError
from face2hbe.repository import CPU_PRECISION, PRECISION_FOLDERS, model_config_pb2

log = logging.getLogger(__name__)


@dataclass
class ServerSettings:
    repository: Path
    host: str = contract.DEFAULT_HOST
    http_port: int = contract.HTTP_PORT
    grpc_port: int = contract.GRPC_PORT
    metrics_port: int = contract.METRICS_PORT
    model_name: str = contract.MODEL_NAME
    # Which graph serves model_name on this CPU server, chosen by measurement (docs/serving.md "CPU default"):
    # the INT8 file (face2hbe_int8) at 2.7x the fp32 file's faces/s with the same test AUC (within 0.0006),
    # mirror-averaged as exported. "fp32" serves face2hbe's own file; graph "plain" drops the mirror pass
    # (1.8x faster again, AUC 0.001-0.003 lower).
    precision: str = CPU_PRECISION
    graph: str = "mirror"
    model_folder: str | None = None  # repository folder to serve under model_name; None = by precision (face2hbe / face2hbe_int8)
    version: str = contract.MODEL_VERSION
    threads_per_instance: int | None = None  # onnxruntime intra-op threads; None = onnxruntime's default
    instance_count: int | None = None  # None = config.pbtxt's instance_group count
    max_queue_delay_us: int | None = None  # None = config.pbtxt's value; 0 with no_batching
    no_batching: bool = False  # disable the dynamic batcher (benchmarks)
    log_verbose: int = 0
    # tritonserver's own log (about 100 lines at start, among them NVML/CUDA notices on a machine
    # without a GPU) goes to this file; None = the server's workspace (triton.log), "-" = stdout.
    server_log: str | None = None
    ignored: list[str] = field(default_factory=list)
    # Also serve the photo model (contract.PHOTO_MODEL_NAME) when its folder is in the repository.
    photo: bool = True
    photo_instance_count: int | None = None  # None = its config.pbtxt's instance_group count


def model_folder(settings: ServerSettings) -> str:
    """The repository folder whose files serve `settings.model_name`."""
    if settings.model_folder:
        return settings.model_folder
    if settings.precision not in PRECISION_FOLDERS:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_FOLDERS)}, not {settings.precision!r}")
    return PRECISION_FOLDERS[settings.precision] if settings.model_name == contract.MODEL_NAME else settings.model_name


class BackendDiedError(Face2hbeError):
    """The server's model backend died while the server was up: it can no longer serve."""


# glibc keeps freed heap memory in its arenas: a refused 512 MB gRPC request (received in
# many slices) left tritonserver 200-600 MB larger for good. Blocks of 64 KiB and more from
# mmap go back to the OS as soon as they are freed (measured: no growth at all).
SERVER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 << 10), "MALLOC_TRIM_THRESHOLD_": str(1 << 20)}


def stub_environment() -> dict[str, str]:
    """Variables the tritonserver process needs on top of ours.

    LD_LIBRARY_PATH: under pyenv (and other non-system Pythons) Triton's Python-backend stub
    otherwise loads the system libpython and fails with "'_thread.RLock' object has no
    attribute '_recursion_count'". Plus the allocator settings above.
    """
    env = dict(SERVER_MALLOC_ENV)
    libdir = sysconfig.get_config_var("LIBDIR")
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir and libdir not in current.split(os.pathsep):
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, current) if p)
    return env


@contextlib.contextmanager
def _scoped_environment(extra: dict[str, str]):
    """os.environ plus `extra` while pytriton launches tritonserver (it copies os.environ), then as before."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def unsupported_fields(config) -> list[str]:
    """config.pbtxt fields that the embedded (Python-backend) server does not apply."""
    ignored = []
    if config.platform and config.platform != "onnxruntime_onnx":
        ignored.append(f"platform {config.platform!r} (runs ONNX through onnxruntime)")
    kinds = {g.kind for g in config.instance_group}
    if model_config_pb2().ModelInstanceGroup.KIND_GPU in kinds:
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


# The pytriton 0.7 function whose failure names the instance start-up race (see EmbeddedServer.start).
HANDSHAKE_RACE = "get_config_from_handshake_server"

# Hang guard on the photo model's call to the face2hbe model (a photo's faces in one or two batches).
PHOTO_BLS_TIMEOUT_S = 60.0

WORKSPACE_PREFIX = "face2hbe-serve-"
PID_FILE = "owner.pid"
SHM_FILE = "shm.txt"  # the /dev/shm blocks this server's processes have mapped (raw request tensors)


def workspace_root() -> Path:
    """Where server workspaces go: /tmp, not $TMPDIR, since pytriton's Unix sockets live there
    (a socket path is limited to 108 bytes) and the path is published in the served config."""
    return Path("/tmp") if os.access("/tmp", os.W_OK) else Path(tempfile.gettempdir())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(tmp_root: str | Path | None = None, shm_root: str | Path = "/dev/shm") -> list[str]:
    """Delete what a crashed earlier server left behind: its workspace and its shared-memory blocks.

    Each server's workspace (sockets, pytriton's logs) holds the owner's pid; a workspace
    whose owner is dead is removed, with the shared-memory blocks (raw face crops of the
    requests in flight) named after that pid. Returns what was removed.
    """
    removed = []
    for workspace in Path(tmp_root or workspace_root()).glob(f"{WORKSPACE_PREFIX}*"):
        try:
            pid = int((workspace / PID_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or being created right now
        if _pid_alive(pid):
            continue
        recorded = (workspace / SHM_FILE).read_text().split() if (workspace / SHM_FILE).is_file() else []
        # pytriton's own (misspelt) prefix for Triton's region, and the request blocks recorded while serving.
        for block in [*Path(shm_root).glob(f"pytrtion{pid}-*"), *(Path(shm_root) / Path(name).name for name in recorded)]:
            if block.exists():
                block.unlink(missing_ok=True)
                removed.append(str(block))
        shutil.rmtree(workspace, ignore_errors=True)
        removed.append(str(workspace))
    return removed


def _make_infer_function(session, outputs: list[str]):
    """The bound callable: runs `session` and returns the named `outputs` (scores, and attributes when served)."""
    import numpy as np
    from pytriton.decorators import batch

    @batch
    def infer(**inputs):
        images = inputs[contract.INPUT_NAME]
        if images.dtype != np.uint8 or images.shape[1:] != contract.INPUT_SHAPE:
            # Triton validates against the bound tensor spec; this guards the callable itself.
            raise ValueError(f"{contract.INPUT_NAME} must be uint8 [-1,{','.join(map(str, contract.INPUT_SHAPE))}]")
        results = session.run(outputs, {contract.INPUT_NAME: images})
        return {name: result.astype(np.float32, copy=False) for name, result in zip(outputs, results)}

    return infer


class PhotoRequestError(Exception):
    """A photo request refused for its input (bad bytes, too many bytes or pixels): one line to the client.

    pytriton 0.7 turns an exception raised by a bound callable into the error text with
    traceback.format_exception(exc, exc.__traceback__) (pytriton/proxy/inference.py) and answers
    it as a TritonError without a code, i.e. INTERNAL (gRPC INTERNAL, HTTP 500). Its callables
    cannot choose the code; this class at least makes the text one line: its traceback reads as
    None, so the text is "face2hbe.serving.embedded.PhotoRequestError: photo: <reason>".
    (PyTritonUnrecoverableError would stop the server: never raised here.)
    """

    __traceback__ = property(lambda self: None, lambda self, value: None)


def _sendable(array):
    """`array` as pytriton 0.7 can send it back: an empty multi-dimensional output ([0, 4], [0, 3]) as _EmptyRows."""
    import numpy as np

    if array.size or array.ndim < 2:
        return array

    class _EmptyRows(np.ndarray):
        """pytriton 0.7 copies an output into shared memory with `array.data.cast("B")`, which Python
        refuses for a view with a zero in a multi-dimensional shape ("memoryview: cannot cast view with
        zeros in shape or strides"). This view hands out its (zero-byte) buffer flat; the shape travels
        in pytriton's header, so the client still gets [0, k]."""

        @property
        def data(self):
            return np.asarray(self).reshape(-1).data

    return array.view(_EmptyRows)


def _loopback(host: str) -> str:
    """An address of this server that a client on this machine can reach (wildcard binds -> loopback)."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def _make_photo_function(grpc_address: str, model_name: str, photo_settings, timeout_s: float):
    """The photo model's callable for one instance: its own gRPC client to the face2hbe model on this server (BLS)."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    from face2hbe.errors import BadImageError
    from face2hbe.photo import FACE_OUTPUT_NAMES, photo_bytes, score_photo

    client = grpcclient.InferenceServerClient(grpc_address)
    requested = [grpcclient.InferRequestedOutput(name) for name in FACE_OUTPUT_NAMES]

    def score_crops(crops: np.ndarray) -> dict[str, np.ndarray]:
        inp = grpcclient.InferInput(contract.INPUT_NAME, list(crops.shape), contract.INPUT_DTYPE)
        inp.set_data_from_numpy(crops)
        result = client.infer(model_name, [inp], outputs=requested, client_timeout=timeout_s)
        return {name: result.as_numpy(name) for name in FACE_OUTPUT_NAMES}

    def infer(requests):
        responses = []
        for request in requests:  # max_batch_size 0, no batcher: one request per call in practice
            try:
                outputs = score_photo(photo_bytes(request[contract.PHOTO_INPUT_NAME]), score_crops, photo_settings)
            except BadImageError as exc:
                raise PhotoRequestError(str(exc)) from None
            responses.append({name: _sendable(array) for name, array in outputs.items()})
        return responses

    infer.close = client.close
    return infer


def publish_parameters(triton, model_name: str, params: dict[str, str]) -> None:
    """Expose config.pbtxt's parameters (labels, thresholds) in the config Triton serves.

    PyTriton's public ModelConfig has no `parameters`; its generated Triton config carries
    `backend_parameters` as Triton `parameters`, so ours join them there. This is the one
    place that touches pytriton internals; it fails loudly (and tests/test_server.py checks
    the served parameters) if a pytriton release changes them.
    """
    try:
        models = [m for m in triton._model_manager.models if m.model_name == model_name]
        originals = [m._get_triton_model_config for m in models]
    except AttributeError as exc:
        raise ModelRepositoryError(f"this pytriton release changed its internals ({exc}): cannot publish labels/thresholds") from None
    if not models:
        raise ModelRepositoryError(f"pytriton has no bound model {model_name!r} to publish parameters for")
    for model, original in zip(models, originals):

        def with_parameters(original=original):
            generated = original()
            generated.backend_parameters.update(params)
            return generated

        model._get_triton_model_config = with_parameters


def _onnx_session(onnx_path: Path, threads: int | None, graph: str = "mirror"):
    import onnxruntime as ort

    from face2hbe.graphs import load_graph

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(load_graph(onnx_path, graph), sess_options=options, providers=["CPUExecutionProvider"])


class EmbeddedServer:
    """Start/stop a PyTriton-hosted Triton serving the repository's model.

    Use as a context manager, or `start()` / `stop()`. `start()` returns once
    the model is loaded and /v2/health/ready answers.
    """

    def __init__(self, settings: ServerSettings):
        from face2hbe.repository import labels_and_thresholds, validate_model_dir, validate_photo_dir

        self.settings = settings
        model_dir = Path(settings.repository) / model_folder(settings)
        if not model_dir.is_dir():
            hint = " (export it with `face2hbe export --format int8`, or serve with --precision fp32)" if model_dir.name == contract.INT8_MODEL_NAME else ""
            raise ModelRepositoryError(f"{model_dir}: model folder not found in repository {settings.repository}{hint}")
        self.config, self.onnx_path = validate_model_dir(model_dir, settings.version)
        self.labels, self.thresholds = labels_and_thresholds(self.config)
        self.ignored = unsupported_fields(self.config)
        photo_dir = Path(settings.repository) / contract.PHOTO_MODEL_NAME
        self.photo_config = validate_photo_dir(photo_dir) if settings.photo and photo_dir.is_dir() else None
        self._photo_functions: list = []
        self._triton = None
        self._workspace: Path | None = None
        self._stubs: set[int] = set()
        self._shm_seen: set[str] = set()

    @property
    def access_token(self) -> str | None:
        """Token for Triton's protected endpoints (statistics, repository, ...), or None."""
        return self._triton.get_access_token() if self._triton else None

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

    def _photo_instance_count(self) -> int:
        if self.settings.photo_instance_count:
            return self.settings.photo_instance_count
        return max(1, sum(g.count or 1 for g in self.photo_config.instance_group) or 1)

    def _bind_photo(self, triton) -> None:
        """Bind the photo model: decode + detect + crop in its callables, scoring through the face2hbe model's gRPC endpoint."""
        import numpy as np
        from pytriton.model_config import ModelConfig, Tensor

        from face2hbe.photo import PhotoSettings

        s = self.settings
        params = {k: v.string_value for k, v in self.photo_config.parameters.items()}
        photo_settings = PhotoSettings.from_parameters(params)
        address = f"{_loopback(s.host)}:{s.grpc_port}"
        self._photo_functions = [_make_photo_function(address, s.model_name, photo_settings, PHOTO_BLS_TIMEOUT_S)
                                 for _ in range(self._photo_instance_count())]
        dtype = {name: np.dtype(contract.numpy_dtype(t)) for name, t in (
            (contract.BOXES_NAME, contract.BOXES_DTYPE), (contract.OUTPUT_NAME, contract.OUTPUT_DTYPE),
            (contract.DETECTION_SCORES_NAME, contract.DETECTION_SCORES_DTYPE), (contract.ATTRIBUTES_NAME, contract.ATTRIBUTES_DTYPE))}
        triton.bind(
            model_name=contract.PHOTO_MODEL_NAME,
            model_version=int(s.version),
            infer_func=self._photo_functions,
            inputs=[Tensor(name=contract.PHOTO_INPUT_NAME, dtype=bytes, shape=contract.PHOTO_INPUT_SHAPE)],
            outputs=[
                Tensor(name=contract.BOXES_NAME, dtype=dtype[contract.BOXES_NAME], shape=contract.BOXES_SHAPE),
                Tensor(name=contract.OUTPUT_NAME, dtype=dtype[contract.OUTPUT_NAME], shape=contract.PHOTO_SCORES_SHAPE),
                Tensor(name=contract.DETECTION_SCORES_NAME, dtype=dtype[contract.DETECTION_SCORES_NAME], shape=contract.DETECTION_SCORES_SHAPE),
                Tensor(name=contract.ATTRIBUTES_NAME, dtype=dtype[contract.ATTRIBUTES_NAME], shape=contract.PHOTO_ATTRIBUTES_SHAPE),
            ],
            config=ModelConfig(batching=False),
            strict=True,
        )
        publish_parameters(triton, contract.PHOTO_MODEL_NAME, params)

    def start(self) -> "EmbeddedServer":
        """Start the server; once again if pytriton's instance handshake lost its start-up race.

        A model with several instances (the photo model) makes pytriton's instances 1..N fetch their
        set-up from instance 0's handshake socket within 1 s; seen twice here on a cold start
        ("Connection refused" in get_config_from_handshake_server), never on the next start.
        """
        try:
            return self._start()
        except Exception as exc:
            if HANDSHAKE_RACE not in str(exc):
                raise
            log.warning("pytriton's model instances did not complete their start-up handshake; starting once more")
            return self._start()

    def _start(self) -> "EmbeddedServer":
        import numpy as np
        from pytriton.model_config import Tensor
        from pytriton.triton import Triton, TritonConfig

        from face2hbe.repository import contract_outputs

        s = self.settings
        for leftover in remove_leftovers():
            log.info("removed leftover of a crashed earlier server: %s", leftover)
        if self.ignored:  # expected with the container's GPU config: worth a line, not a warning each
            log.info("embedded server ignores these config.pbtxt fields: %s", "; ".join(self.ignored))
        self._workspace = Path(tempfile.mkdtemp(prefix=WORKSPACE_PREFIX, dir=workspace_root()))
        (self._workspace / PID_FILE).write_text(str(os.getpid()))
        triton_config = TritonConfig(
            http_address=s.host,
            http_port=s.http_port,
            grpc_address=s.host,
            grpc_port=s.grpc_port,
            metrics_address=s.host,
            metrics_port=s.metrics_port,
            # The model runs on onnxruntime's CPU provider here, so no nv_gpu_* metrics: their DCGM
            # start-up would print "Error: Failed to initialize NVML" on machines without a GPU.
            allow_gpu_metrics=False,
            log_verbose=s.log_verbose,
            log_file=None if s.server_log == "-" else Path(s.server_log or self._workspace / "triton.log"),
            exit_on_error=True,
            strict_readiness=True,
            # Reused request objects keep the largest payload they ever held (a refused 512 MB request
            # would stay resident): no reuse pool, so each request is freed when done.
            grpc_infer_allocation_pool_size=0,
        )
        sessions = [_onnx_session(self.onnx_path, s.threads_per_instance, s.graph) for _ in range(self._instance_count())]
        # One dry run per session so the first request does not pay onnxruntime's set-up.
        for session in sessions:
            session.run(None, {contract.INPUT_NAME: np.zeros((1, *contract.INPUT_SHAPE), np.uint8)})
        triton = Triton(config=triton_config, workspace=self._workspace / "pytriton")
        try:
            triton.bind(
                model_name=s.model_name,
                model_version=int(s.version),
                infer_func=[_make_infer_function(sess, [o.name for o in self.config.output]) for sess in sessions],
                inputs=[Tensor(name=contract.INPUT_NAME, dtype=np.uint8, shape=contract.INPUT_SHAPE)],
                # The outputs config.pbtxt declares (validate_model_dir checked them against the contract and the graph).
                outputs=[Tensor(name=name, dtype=np.dtype(contract.numpy_dtype(dtype)), shape=shape)
                         for name, (dtype, shape) in contract_outputs(attributes=len(self.config.output) > 1).items()],
                config=self._model_config(),
                strict=True,
            )
            publish_parameters(triton, s.model_name, {k: v.string_value for k, v in self.config.parameters.items()})
            if self.photo_config is not None:
                self._bind_photo(triton)
            with _scoped_environment(stub_environment()):
                triton.run()
        except Exception:
            for line in self.server_errors():
                log.error("tritonserver: %s", line)
            triton.stop()
            self._close_photo_clients()
            self._remove_workspace()
            raise
        self._triton = triton
        self._stubs = self._stub_pids()
        self.record_shared_memory()
        log.info(
            "serving %s v%s from %s on %s: http %d, grpc %d, metrics %d (%d instance(s))",
            s.model_name, s.version, self.onnx_path, s.host, s.http_port, s.grpc_port, s.metrics_port, len(sessions),
        )
        if self._photo_functions:
            log.info("serving %s v%s (%d instance(s)), scoring faces through %s", contract.PHOTO_MODEL_NAME, s.version,
                     len(self._photo_functions), s.model_name)
        return self

    def _server_process(self):
        """This server's tritonserver process (its binary lives in our workspace: other servers of this process differ)."""
        import psutil

        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.name() == "tritonserver" and str(self._workspace) in " ".join(child.cmdline()[:1]):
                    return child
        return None

    def _stub_pids(self) -> set[int]:
        """PIDs of the Python-backend stub processes that run the model's instances."""
        import psutil

        server = self._server_process()
        if server is None:
            return set()
        pids = set()
        for child in server.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "triton_python_backend_stub" in child.name() or "triton_python_backend_stub" in " ".join(child.cmdline()[:1]):
                    pids.add(child.pid)
        return pids

    def server_errors(self, last: int = 5) -> list[str]:
        """The last error lines of tritonserver's own log (when it goes to the workspace file), one line each."""
        path = Path(self.settings.server_log or (self._workspace / "triton.log" if self._workspace else ""))
        if self.settings.server_log == "-" or not path.is_file():
            return []
        lines = [" ".join(line.split()) for line in path.read_text(errors="replace").splitlines() if line.startswith("E")]
        return lines[-last:]

    def record_shared_memory(self) -> None:
        """Note in the workspace every /dev/shm block our processes map, so a later start can remove them after a crash."""
        if self._workspace is None:
            return
        names = set()
        for pid in (os.getpid(), *self._stubs):
            try:
                maps = Path(f"/proc/{pid}/maps").read_text()
            except OSError:
                continue
            names.update(line.split()[-1] for line in maps.splitlines() if "/dev/shm/" in line)
        new = names - self._shm_seen
        if new:
            self._shm_seen |= new
            with (self._workspace / SHM_FILE).open("a") as f:
                f.write("".join(f"{name}\n" for name in sorted(new)))

    def check_health(self) -> None:
        """Raise BackendDiedError unless tritonserver and every model stub it started are still running.

        Triton's own /v2/health/ready keeps answering 200 after a stub dies while every
        inference fails; this is the check that tells the truth.
        """
        if self._triton is None or not self._triton.is_alive():
            raise BackendDiedError("the Triton server process died")
        dead = self._stubs - self._stub_pids()
        if dead:
            for line in self.server_errors():
                log.error("tritonserver: %s", line)
            raise BackendDiedError(f"model backend process(es) {sorted(dead)} died; every inference would fail")

    def stop(self) -> None:
        if self._triton is not None:
            # pytriton echoes tritonserver's console to stdout (its log goes to a file); while
            # stopping that is only "Signal (2) received.", so the echo ends here.
            console = getattr(self._triton, "_triton_server", None)
            if console is not None:
                console._verbose = False
            self._triton.stop()
            self._triton = None
        self._close_photo_clients()
        self._remove_workspace()

    def _close_photo_clients(self) -> None:
        for function in self._photo_functions:
            with contextlib.suppress(Exception):
                function.close()
        self._photo_functions = []

    def _remove_workspace(self) -> None:
        if self._workspace is not None:
            shutil.rmtree(self._workspace, ignore_errors=True)
            self._workspace = None

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def serve_forever(self, check_every_s: float = 0.5) -> None:
        """Block until SIGINT/SIGTERM, then shut down cleanly.

        Raises BackendDiedError (after stopping what is left) within `check_every_s` of
        tritonserver or a model stub dying, so that `face2hbe serve` exits non-zero and a
        supervisor (systemd, Kubernetes, compose) restarts it instead of routing traffic
        to a server that answers "ready" and fails every request.
        """
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            with self:
                while not stop.wait(check_every_s):
                    self.check_health()
                    self.record_shared_memory()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
