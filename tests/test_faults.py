"""Faults injected into a real server process: killed mid-batch, broken repository, down at start.

The server runs as `python -m face2hbe.cli serve` in its own process group, so
SIGKILL to the group really kills Triton and its Python-backend children too.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPOSITORY, ROOT, SAMPLES, SHARED_DATA, free_port

BATCH = 36


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp_path)}


class ServerProcess:
    """`face2hbe serve` in a separate process group on fixed free ports."""

    def __init__(self, repository: Path, log: Path, ports=None):
        self.repository, self.log = repository, log
        self.ports = ports or (free_port(), free_port(), free_port())
        self.proc: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports[1]}"

    def start(self) -> "ServerProcess":
        http, grpc, metrics = self.ports
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "face2hbe.cli", "serve", "--repository", str(self.repository),
                 "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=_env(self.log.parent),
            )
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.grpc_url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if client.is_server_ready(client_timeout=2) and client.is_model_ready("face2hbe", client_timeout=2):
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(0.3)
        raise AssertionError(f"server not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole process group (python, tritonserver, backend stubs): no clean shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        if self.proc is not None:
            try:  # children reparented away from the leader may still be alive for a moment
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def photos(tmp_path) -> list[Path]:
    """BATCH real photos as symlinks in one folder: LFW when present, else the bundled samples repeated."""
    folder = tmp_path / "photos"
    folder.mkdir()
    lfw = SHARED_DATA / "lfw" / "images"
    if lfw.is_dir():
        sources = sorted(p for d in sorted(lfw.iterdir())[:BATCH] for p in sorted(d.glob("*.jpg"))[:1])
    else:
        sources = [SAMPLES / "grace_hopper.jpg", SAMPLES / "astronaut_eileen_collins.jpg"] * BATCH
    links = []
    for i, src in enumerate(sources[:BATCH]):
        link = folder / f"{i:03d}_{src.name}"
        link.symlink_to(src)
        links.append(link)
    assert len(links) == BATCH
    return links


def _recommend(args, tmp_path, **popen):
    cmd = [sys.executable, "-m", "face2hbe.cli", "recommend", *map(str, args), "--no-progress"]
    return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path), **popen)


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_server_killed_mid_batch_then_resume_loses_nothing(tmp_path, photos):
    server = ServerProcess(REPOSITORY, tmp_path / "server.log").start()
    try:
        server.wait_ready()
        out = tmp_path / "results.jsonl"
        args = [photos[0].parent, "--url", server.grpc_url, "--output", out, "--workers", "1", "--retries", "2", "--timeout", "5"]
        client = _recommend(args, tmp_path)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and client.poll() is None:
            if out.exists() and len(out.read_text().splitlines()) >= 5:
                break
            time.sleep(0.05)
        assert client.poll() is None, f"the batch ended before the kill:\n{client.communicate()[1][-2000:]}"
        server.kill()  # mid-batch: no shutdown, in-flight requests die with it
        stdout, stderr = client.communicate(timeout=180)
        first = _records(out)

        assert client.returncode == 1, stderr[-2000:]
        error = _last_line(stderr)
        assert error.startswith("error: ") and "unavailable" in error and "--resume" in error, error
        assert "Traceback" not in stderr
        assert "retry 1/2" in stderr, "the client did not retry before giving up"
        not_processed = int(error.split(" image(s) not processed")[0].rsplit(" ", 1)[-1])
        assert not_processed > 0
        paths = [r["path"] for r in first]
        assert len(paths) == len(set(paths)), "duplicate records after the outage"
        assert len(first) + not_processed == BATCH, (len(first), not_processed)
        print(f"\nkilled mid-batch: {len(first)} records written, {not_processed} not processed; stderr: {error}")

        server.start()  # same ports, as an operator would restart it
        server.wait_ready()
        again = _recommend([*args, "--resume"], tmp_path)
        stdout, stderr = again.communicate(timeout=300)
        assert again.returncode == 0, stderr[-2000:]
    finally:
        server.kill()

    final = _records(out)
    paths = [r["path"] for r in final]
    assert len(paths) == len(set(paths)) == BATCH, "one record per image, no duplicates"
    assert set(paths) == {str(p) for p in photos}, "every image present"
    assert all(r["error"] is None for r in final), [r["error"] for r in final if r["error"]]
    done_before = {r["path"]: r for r in first if not r["error"]}
    for r in final:  # records from before the kill are kept as they were, not redone
        if r["path"] in done_before:
            assert r == done_before[r["path"]]


def _broken_repository(tmp_path: Path, kind: str) -> Path:
    repo = tmp_path / kind / "repository"
    model = repo / "face2hbe"
    (model / "1").mkdir(parents=True)
    shutil.copy(REPOSITORY / "face2hbe" / "labels.txt", model)
    config = (REPOSITORY / "face2hbe" / "config.pbtxt").read_text()
    if kind != "missing_onnx":
        (model / "1" / "model.onnx").symlink_to(REPOSITORY / "face2hbe" / "1" / "model.onnx")
    if kind == "bad_syntax":
        config = config.replace("max_batch_size: 32", "max_batch_size: 32 }{")
    if kind == "wrong_tensor_name":
        config = config.replace('name: "image"', 'name: "input_1"')
    (model / "config.pbtxt").write_text(config)
    return repo


BROKEN = {
    "missing_onnx": "model.onnx: missing model file",
    "bad_syntax": "config.pbtxt: not a valid Triton model config",
    "wrong_tensor_name": "'input_1'",
}


def test_broken_repository_refuses_to_start_with_one_line(tmp_path):
    procs = {}
    for kind in BROKEN:
        repo = _broken_repository(tmp_path, kind)
        ports = [str(free_port()) for _ in range(3)]
        procs[kind] = subprocess.Popen(
            [sys.executable, "-m", "face2hbe.cli", "serve", "--repository", str(repo),
             "--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2]],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path),
            start_new_session=True,
        )
    try:
        for kind, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 1, (kind, stdout, stderr)
            assert "Traceback" not in stderr, stderr
            line = _last_line(stderr)
            assert line.startswith("error: ") and BROKEN[kind] in line, (kind, line)
            if kind == "wrong_tensor_name":
                assert "differs from contract" in line
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


def test_server_down_at_start(tmp_path):
    port = free_port()  # nothing listens here
    client = _recommend([SAMPLES / "grace_hopper.jpg", "--url", f"127.0.0.1:{port}", "--output", tmp_path / "out.jsonl", "--retries", "1"], tmp_path)
    stdout, stderr = client.communicate(timeout=120)
    assert client.returncode == 1, stderr
    line = _last_line(stderr)
    assert line.startswith("error: ") and f"127.0.0.1:{port}" in line and "unavailable after 2 attempts" in line, line
    assert "Traceback" not in stderr
