"""`face2hbe serve` in a child process: what benchmarks, load tests and fault tests start and stop.

The child runs in its own process group, so `kill()` reaches tritonserver and its
Python-backend stubs too, as a crash or an OOM kill would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from face2hbe import contract
from face2hbe.errors import ServerUnavailableError
from face2hbe.net import free_port


class ServerProcess:
    """`python -m face2hbe.app.cli serve` on free (or given) loopback ports.

    with ServerProcess(repository, log) as server:   # started and ready
        client = tritonclient.grpc.InferenceServerClient(server.grpc_url)
    """

    def __init__(
        self,
        repository: str | Path,
        log: str | Path | None = None,
        ports: tuple[int, int, int] | None = None,
        args: list[str] = (),
        env: dict | None = None,
        cwd: str | Path | None = None,
    ):
        self.repository, self.log = Path(repository), Path(log) if log else None
        self.ports = ports or (free_port(), free_port(), free_port())
        self.args, self.env, self.cwd = list(args), env, cwd
        self.proc: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"{contract.DEFAULT_HOST}:{self.ports[0]}"

    @property
    def grpc_url(self) -> str:
        return f"{contract.DEFAULT_HOST}:{self.ports[1]}"

    @property
    def metrics_url(self) -> str:
        return f"{contract.DEFAULT_HOST}:{self.ports[2]}"

    def command(self) -> list[str]:
        http, grpc, metrics = self.ports
        return [
            sys.executable,
            "-m",
            "face2hbe.app.cli",
            "serve",
            "--repository",
            str(self.repository),
            "--http-port",
            str(http),
            "--grpc-port",
            str(grpc),
            "--metrics-port",
            str(metrics),
            *self.args,
        ]

    def start(self) -> "ServerProcess":
        out = self.log.open("ab") if self.log else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})},
                cwd=self.cwd,
            )
        finally:
            if self.log:
                out.close()
        return self

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log and self.log.is_file() else "(no log)"

    def wait_ready(self, timeout: float = 240.0, model: str = contract.MODEL_NAME) -> "ServerProcess":
        """Block until the server and `model` are ready; ServerUnavailableError if it exits or the time runs out."""
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.grpc_url)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise ServerUnavailableError(
                        f"server exited with code {self.proc.returncode}: {self.log_tail(500)}"
                    )
                try:
                    if client.is_server_ready(client_timeout=2) and client.is_model_ready(model, client_timeout=2):
                        return self
                except Exception:  # not listening yet  # noqa: BLE001
                    pass
                time.sleep(0.3)
        finally:
            client.close()
        raise ServerUnavailableError(f"server not ready after {timeout:.0f} s: {self.log_tail(500)}")

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL to the group if it does not end in `timeout` seconds."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL the whole process group (python, tritonserver, backend stubs): no clean shutdown."""
        if self.proc is None:
            return
        for _ in range(2):  # children reparented away from the leader may still be alive for a moment
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            if self.proc.poll() is None:
                self.proc.wait(timeout=30)

    def __enter__(self) -> "ServerProcess":
        self.start()
        try:
            return self.wait_ready()
        except BaseException:
            self.kill()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
