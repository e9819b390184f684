"""`face2hbe serve`: NVIDIA's tritonserver on a model repository generated from model_repository/ for this host.

The binary, its Python backend and the stub for this Python come with the nvidia-pytriton wheel (located
on disk, never imported). Each server gets a private workspace in the temp folder: the repository it serves,
its backend folder and its log. There `face2hbe` takes its CPU form (the committed config.pbtxt with backend
python, KIND_CPU and no GPU accelerators; cpu_model.py runs the ONNX file in onnxruntime) and
`face2hbe_photo` is the committed folder itself (the adapter NVIDIA's container runs). Triton's own options do
the rest: strict readiness, exit on error, model_warmup, dynamic batching and instance groups from config.pbtxt,
the admin APIs behind a key that only this object holds. A killed server's workspace and its shared memory
(the Python backend's regions carry face crops) are removed at the next start.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from face2hbe import contract
from face2hbe.errors import Face2hbeError, ModelRepositoryError
from face2hbe.net import check_ports_free
from face2hbe.repository import CONFIG_FILE, CPU_PRECISION, ONNX_FILE, PRECISION_FOLDERS, model_config_pb2

log = logging.getLogger(__name__)

# A server's workspace: <temp folder>/face2hbe-serve-<owner pid>-<random>; its /dev/shm regions are named after it.
WORKSPACE_PREFIX = "face2hbe-serve-"
SHM_TAG = "-shm-"
LOG_FILE = "triton.log"
ADMIN_APIS = "model-repository,shared-memory,statistics,trace,logging"  # Triton's names; closed without the key
# What NVIDIA's container runs with too (docker-compose.yml; tests/test_compose.py compares them).
CONTAINER_FLAGS = (
    "--model-control-mode=none",
    "--strict-readiness=true",
    "--exit-on-error=true",
    "--disable-auto-complete-config",
)
ACCESS_HEADER = "triton-access-token"
# glibc gives blocks of 64 KiB and more back to the OS when freed (a decoded photo, a refused 512 MB request).
SERVER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 << 10), "MALLOC_TRIM_THRESHOLD_": str(1 << 20)}
STUB = "triton_python_backend_stub"
# Logged at level E by every GPU-enabled tritonserver on a host without a CUDA driver (core server.cc,
# CudaBlockManager); harmless here (the models run on CPUs), never the reason a start failed.
CPU_HOST_NOTICE = "CudaDriverHelper has not been initialized."


@dataclass
class ServerSettings:
    repository: Path
    host: str = contract.DEFAULT_HOST
    http_port: int = contract.HTTP_PORT
    grpc_port: int = contract.GRPC_PORT
    metrics_port: int = contract.METRICS_PORT
    model_name: str = contract.MODEL_NAME
    # Which file serves model_name on CPUs, chosen by measurement (docs/serving.md "CPU default"): the INT8 file
    # (face2hbe_int8) at 2.7x fp32's faces/s, test AUC within 0.0006; "fp32" serves face2hbe's own file.
    # graph "plain" drops the mirror pass (1.8x faster again, AUC 0.001-0.003 lower).
    precision: str = CPU_PRECISION
    graph: str = "mirror"
    model_folder: str | None = None  # repository folder to serve under model_name; None = by precision
    version: str = contract.MODEL_VERSION
    threads_per_instance: int | None = None  # onnxruntime intra-op threads; None = onnxruntime's default
    instance_count: int | None = None  # None = config.pbtxt's instance_group count
    max_queue_delay_us: int | None = None  # None = config.pbtxt's value
    no_batching: bool = False  # no dynamic batcher (benchmarks)
    log_verbose: int = 0
    server_log: str | None = None  # tritonserver's output: None = <workspace>/triton.log, "-" = our stdout, or a file
    photo: bool = True  # also serve contract.PHOTO_MODEL_NAME when its folder is in the repository
    photo_instance_count: int | None = None  # None = its config.pbtxt's instance_group count
    start_timeout_s: float = 600.0  # hang guard: every model ready by then


class BackendDiedError(Face2hbeError):
    """tritonserver or one of its model stubs died while the server was up: it can no longer serve."""


class ServerStartError(Face2hbeError):
    """tritonserver exited or hung before every model was ready."""


def triton_files() -> tuple[Path, Path]:
    """(tritonserver's folder, its libraries' folder) in the installed nvidia-pytriton wheel, never imported."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerStartError("tritonserver not found: install the [serve] extra (nvidia-pytriton)")
    package = Path(next(iter(spec.submodule_search_locations)))
    return package / "tritonserver", package.parent / "nvidia_pytriton.libs"


def server_environment(libs: Path) -> dict[str, str]:
    """Our environment plus what tritonserver and its Python-backend stubs need (as pytriton sets it).

    LD_LIBRARY_PATH: the wheel's libraries, and this Python's libpython (under pyenv the stub would load the
    system's and fail with "'_thread.RLock' object has no attribute '_recursion_count'"); PATH: this Python
    environment's bin first, so the stubs import what this Python imports (face2hbe, onnxruntime).
    """
    env = {**os.environ, **SERVER_MALLOC_ENV}
    paths = [sysconfig.get_config_var("LIBDIR"), str(libs), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
    env["PATH"] = os.pathsep.join([str(Path(sys.exec_prefix) / "bin"), env.get("PATH", "")])
    return env


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(name: str) -> int | None:
    """The pid of the process that made a workspace or shared-memory region, from its name (face2hbe-serve-PID-)."""
    pid = name.removeprefix(WORKSPACE_PREFIX).split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def remove_leftovers(tmp_root: str | Path | None = None, shm_root: str | Path = "/dev/shm") -> list[str]:
    """Delete the workspaces and shared-memory regions of servers whose owner process is dead; return what went.

    A failed start's log (face2hbe-serve-*.log) is kept: its path was the message."""
    removed, roots = [], (Path(tmp_root or tempfile.gettempdir()), Path(shm_root))
    for path in [path for root in roots for path in root.glob(f"{WORKSPACE_PREFIX}*")]:
        pid = _owner(path.name)
        if pid is None or path.suffix == ".log" or _pid_alive(pid):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(str(path))
    return removed


def cpu_config(config, settings: ServerSettings, instances: int):
    """The committed config in the CPU form this server runs: Python backend (cpu_model.py), KIND_CPU, no GPU
    accelerators; batching and parameters as committed, plus the graph, onnxruntime threads and rows per run; the
    committed model_warmup up to that many rows (a larger warm-up runs in parts of it: the same runs again)."""
    from face2hbe.graphs import CPU_RUN_ROWS

    pb = model_config_pb2()
    cpu = pb.ModelConfig()
    cpu.CopyFrom(config)
    cpu.name, cpu.backend = settings.model_name, "python"
    cpu.ClearField("platform")
    cpu.optimization.ClearField("execution_accelerators")
    del cpu.instance_group[:]
    cpu.instance_group.add(kind=pb.ModelInstanceGroup.KIND_CPU, count=instances)
    if settings.no_batching:
        cpu.ClearField("dynamic_batching")
    elif settings.max_queue_delay_us is not None:
        cpu.dynamic_batching.max_queue_delay_microseconds = settings.max_queue_delay_us
    cpu.parameters["graph"].string_value = settings.graph
    cpu.parameters["intra_op_thread_count"].string_value = str(settings.threads_per_instance or 0)
    cpu.parameters["run_rows"].string_value = str(CPU_RUN_ROWS)
    kept = [w for w in cpu.model_warmup if w.batch_size <= CPU_RUN_ROWS]
    del cpu.model_warmup[:]
    cpu.model_warmup.extend(kept)
    return cpu


def _instances(config, override: int | None) -> int:
    return override or max(1, sum(group.count or 1 for group in config.instance_group))


class EmbeddedServer:
    """tritonserver on this host's form of the repository. A context manager, or `start()` / `stop()`;
    `start()` returns once every model is ready."""

    def __init__(self, settings: ServerSettings):
        from face2hbe.repository import labels_and_thresholds, validate_model_dir, validate_photo_dir

        self.settings = s = settings
        if s.precision not in PRECISION_FOLDERS:
            raise ValueError(f"precision must be one of {', '.join(PRECISION_FOLDERS)}, not {s.precision!r}")
        by_precision = PRECISION_FOLDERS[s.precision] if s.model_name == contract.MODEL_NAME else s.model_name
        folder = s.model_folder or by_precision
        model_dir = Path(s.repository) / folder
        if not model_dir.is_dir():
            hint = (
                " (export it with `face2hbe export --format int8`, or serve with --precision fp32)"
                if folder == contract.INT8_MODEL_NAME
                else ""
            )
            raise ModelRepositoryError(f"{model_dir}: model folder not found in repository {s.repository}{hint}")
        self.config, self.onnx_path = validate_model_dir(model_dir, s.version)
        self.labels, self.thresholds = labels_and_thresholds(self.config)
        photo_dir = Path(s.repository) / contract.PHOTO_MODEL_NAME
        self.photo_config = validate_photo_dir(photo_dir) if s.photo and photo_dir.is_dir() else None
        self.access_token = secrets.token_urlsafe(32)  # the key to Triton's admin APIs (ADMIN_APIS)
        self.workspace: Path | None = None
        self.process: subprocess.Popen | None = None
        self._stubs: dict[int, str] = {}  # pid -> the model instance it runs
        self._kept_log: Path | None = None

    def admin_headers(self, protocol: str = "http") -> dict[str, str]:
        """The headers that open Triton's admin APIs (ADMIN_APIS) on this server: only this object has the key."""
        return {ACCESS_HEADER if protocol == "http" else f"triton-grpc-protocol-{ACCESS_HEADER}": self.access_token}

    # --- the generated repository -----------------------------------------------------------------

    def _write_model(self, source: Path, config, files: dict[str, Path]) -> None:
        """<workspace>/models/<name>: `config` as config.pbtxt, the label files it names, links to `files` in 1/."""
        from google.protobuf import text_format

        target = self.workspace / "models" / config.name
        (target / self.settings.version).mkdir(parents=True)
        for output in config.output:
            if output.label_filename and (source / output.label_filename).is_file():
                shutil.copy(source / output.label_filename, target)
            else:  # only Triton's classification extension reads them: a missing one is no reason to refuse
                output.ClearField("label_filename")
        (target / CONFIG_FILE).write_text(text_format.MessageToString(config))
        for name, path in files.items():
            (target / self.settings.version / name).symlink_to(path.resolve())

    def _write_repository(self, backends: Path) -> None:
        s = self.settings
        python = self.workspace / "backends" / "python"
        python.mkdir(parents=True)
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            (python / name).symlink_to(backends / "python" / name)
        stub = backends.parent / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / STUB
        if not stub.is_file():
            raise ServerStartError(f"{stub}: the installed nvidia-pytriton has no Python-backend stub for this Python")
        (python / STUB).symlink_to(stub)
        config = cpu_config(self.config, s, _instances(self.config, s.instance_count))
        files = {ONNX_FILE: self.onnx_path, "model.py": Path(__file__).with_name("cpu_model.py")}
        self._write_model(self.onnx_path.parent.parent, config, files)
        if self.photo_config is not None:
            photo_dir = Path(s.repository) / contract.PHOTO_MODEL_NAME
            photo = model_config_pb2().ModelConfig()
            photo.CopyFrom(self.photo_config)
            photo.name = contract.PHOTO_MODEL_NAME
            count = _instances(photo, s.photo_instance_count)
            del photo.instance_group[:]
            photo.instance_group.add(kind=model_config_pb2().ModelInstanceGroup.KIND_CPU, count=count)
            self._write_model(photo_dir, photo, {"model.py": photo_dir / s.version / "model.py"})

    def _command(self, binary: Path) -> list[str]:
        s, restricted = self.settings, f"{ADMIN_APIS}:{ACCESS_HEADER}={self.access_token}"
        return [
            str(binary),
            f"--model-repository={self.workspace / 'models'}",
            f"--backend-directory={self.workspace / 'backends'}",
            *CONTAINER_FLAGS,
            f"--http-address={s.host}",
            f"--http-port={s.http_port}",
            f"--grpc-address={s.host}",
            f"--grpc-port={s.grpc_port}",
            f"--metrics-address={s.host}",
            f"--metrics-port={s.metrics_port}",
            "--allow-gpu-metrics=false",
            # No reuse pool for gRPC request objects: a pooled one keeps the largest payload it ever held.
            "--grpc-infer-allocation-pool-size=0",
            f"--log-verbose={s.log_verbose}",
            "--exit-timeout-secs=10",
            "--pinned-memory-pool-byte-size=0",  # the models run on CPUs: no page-locked buffers for GPU copies
            f"--backend-config=python,shm-region-prefix-name={self.workspace.name}{SHM_TAG}",
            f"--http-restricted-api={restricted}",
            f"--grpc-restricted-protocol={restricted}",
        ]

    # --- life cycle -------------------------------------------------------------------------------------

    @property
    def log_path(self) -> Path | None:
        s = self.settings
        if self._kept_log or s.server_log == "-":
            return self._kept_log
        return Path(s.server_log) if s.server_log else self.workspace / LOG_FILE if self.workspace else None

    def start(self) -> "EmbeddedServer":
        s = self.settings
        check_ports_free(s.host, {"HTTP": s.http_port, "gRPC": s.grpc_port, "metrics": s.metrics_port})
        for leftover in remove_leftovers():
            log.info("removed leftover of a killed server: %s", leftover)
        home, libs = triton_files()
        self.workspace = Path(tempfile.mkdtemp(prefix=f"{WORKSPACE_PREFIX}{os.getpid()}-"))
        try:
            self._write_repository(home / "backends")
            command = self._command(home / "bin" / "tritonserver")
            if threading.current_thread() is threading.main_thread():
                # SIGTERM to tritonserver when this process ends (PR_SET_PDEATHSIG, kept across exec). The kernel sends
                # it when the thread that started it ends, hence the main thread only.
                command = [
                    sys.executable,
                    "-S",
                    "-c",
                    "import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 15); "
                    f"os.getppid() == {os.getpid()} or sys.exit(1); os.execv(sys.argv[1], sys.argv[1:])",
                    *command,
                ]
            out = self.log_path.open("ab") if self.log_path else None
            with out or contextlib.nullcontext():
                self.process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    cwd=self.workspace,
                    stderr=subprocess.STDOUT if out else None,
                    env=server_environment(libs),
                )
            self._wait_ready()
        except Exception as exc:
            kept = self._keep_log()
            reason = self.last_error() or str(exc)
            self.stop()
            where = f"; full log: {kept}" if kept else ""
            raise ServerStartError(f"tritonserver did not start: {reason}{where}") from None
        except BaseException:
            self.stop()
            raise
        self._stubs = self._stub_pids()
        names = [s.model_name] + ([contract.PHOTO_MODEL_NAME] if self.photo_config is not None else [])
        log.info(
            "serving %s (%s, graph %s) on %s: http %d, grpc %d, metrics %d",
            ", ".join(names),
            self.onnx_path.parent.parent.name,
            s.graph,
            s.host,
            s.http_port,
            s.grpc_port,
            s.metrics_port,
        )
        return self

    def _wait_ready(self) -> None:
        s = self.settings
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(s.host, s.host)
        deadline = time.monotonic() + s.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(f"tritonserver exited with code {self.process.returncode}")
            with contextlib.suppress(OSError):
                connection = http.client.HTTPConnection(host, s.http_port, timeout=5)
                try:
                    connection.request("GET", "/v2/health/ready")
                    if connection.getresponse().status == 200:  # strict readiness: every model is ready
                        return
                finally:
                    connection.close()
            time.sleep(0.2)
        raise ServerStartError(f"tritonserver not ready within {s.start_timeout_s:g} s")

    def _keep_log(self) -> Path | None:
        """The server log of a failed start, moved out of the workspace that is about to go."""
        path = self.log_path
        if path is None or not path.is_file() or self.workspace is None or path.parent != self.workspace:
            return path
        kept = self.workspace.with_name(f"{self.workspace.name}.log")
        shutil.move(path, kept)
        self._kept_log = kept
        return kept

    def last_error(self) -> str:
        """tritonserver's last error line (E... in its log), on one line; '' when none."""
        path = self.log_path
        lines = path.read_text(errors="replace").splitlines() if path and path.is_file() else []
        errors = [
            line.split("] ", 1)[-1]
            for line in lines
            if line[:1] == "E" and line[1:5].isdigit() and CPU_HOST_NOTICE not in line
        ]
        # Triton quotes its messages and escapes their line breaks: the first line is the reason (a traceback follows).
        return " ".join(errors[-1].strip('"').split("\\n", 1)[0].split())[:500] if errors else ""

    def _tree(self):
        import psutil

        try:
            return psutil.Process(self.process.pid).children(recursive=True) if self.process else []
        except psutil.Error:
            return []

    def _stub_pids(self) -> dict[int, str]:
        stubs = {}
        for child in self._tree():
            with contextlib.suppress(Exception):
                cmdline = child.cmdline()
                if cmdline and cmdline[0].endswith(STUB):
                    stubs[child.pid] = Path(cmdline[1]).parent.parent.name if len(cmdline) > 1 else "?"
        return stubs

    def rss(self) -> int:
        """Resident memory of tritonserver and its stubs together, in bytes."""
        import psutil

        total = 0
        for proc in [self.process.pid, *self._tree()] if self.process else []:
            with contextlib.suppress(psutil.Error):
                total += (psutil.Process(proc) if isinstance(proc, int) else proc).memory_info().rss
        return total

    def check_health(self) -> None:
        """Raise BackendDiedError unless tritonserver and every model stub it started are running."""
        if self.process is None or self.process.poll() is not None:
            code, error = self.process.returncode if self.process else None, self.last_error()
            raise BackendDiedError(f"tritonserver died (exit code {code}){': ' + error if error else ''}")
        dead = sorted(set(self._stubs) - set(self._stub_pids()))
        if dead:
            models = ", ".join(sorted({self._stubs[pid] for pid in dead}))
            raise BackendDiedError(f"model backend process(es) {dead} of {models} died; every inference would fail")

    def stop(self) -> None:
        """SIGTERM to tritonserver (it unloads the models, ending their stubs), SIGKILL after 30 s; then the
        workspace and shared memory go."""
        if self.process is not None:
            tree = self._tree()
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            for proc in tree:  # stubs outlive a killed tritonserver only briefly; never leave one behind
                with contextlib.suppress(Exception):
                    proc.kill()
            self.process = None
        if self.workspace is not None:
            for block in Path("/dev/shm").glob(f"{self.workspace.name}{SHM_TAG}*"):
                block.unlink(missing_ok=True)
            shutil.rmtree(self.workspace, ignore_errors=True)
            self.workspace = None

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def serve_forever(self, check_every_s: float = 0.5) -> None:
        """Serve until SIGINT/SIGTERM, then stop cleanly.

        Raises BackendDiedError (after stopping what is left) within `check_every_s` of tritonserver or a stub dying:
        Triton 2.51's Python backend neither restarts a dead stub nor reports its model unready (every request then
        fails with "Stub process ... is not healthy"), so `face2hbe serve` exits 1 for its supervisor to restart it.
        """
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            with self:
                while not stop.wait(check_every_s):
                    self.check_health()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
