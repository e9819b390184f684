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

from face2hbe.client.recommend import HOLD_ENV
from face2hbe.serving.process import ServerProcess

from conftest import REPOSITORY, SAMPLES, SHARED_DATA, free_port

BATCH = 36


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp_path)}


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


def _recommend(args, tmp_path, env=None, **popen):
    cmd = [sys.executable, "-m", "face2hbe.cli", "recommend", *map(str, args), "--no-progress"]
    return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**_env(tmp_path), **(env or {})}, **popen)


def _hold(tmp_path, after: int) -> tuple[dict, Path]:
    """The client waits after its `after`-th record until the returned file exists: the test's kill point."""
    release = tmp_path / "release"
    return {HOLD_ENV: f"{after}:{release}"}, release


def _wait_for_records(out: Path, count: int, proc, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout  # a hang guard only: the client holds at `count` by itself
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and len(out.read_text().splitlines()) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"client ended or hung before {count} records:\n{proc.communicate()[1][-2000:] if proc.poll() is not None else ''}")


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_server_killed_mid_batch_then_resume_loses_nothing(tmp_path, photos):
    server = ServerProcess(REPOSITORY, tmp_path / "server.log", env=_env(tmp_path)).start()
    try:
        server.wait_ready()
        out = tmp_path / "results.jsonl"
        args = [photos[0].parent, "--url", server.grpc_url, "--output", out, "--workers", "1", "--retries", "2", "--timeout", "5"]
        env, release = _hold(tmp_path, 5)
        client = _recommend(args, tmp_path, env=env)
        _wait_for_records(out, 5, client)
        server.kill()  # mid-batch: no shutdown; the client is held after 5 records, whatever this machine's speed
        release.touch()
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
            [sys.executable, "-m", "face2hbe.cli", "serve", "--repository", str(repo), "--precision", "fp32",
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
    out = tmp_path / "out.jsonl"
    out.write_text('{"path": "from an older run"}\n')
    client = _recommend([SAMPLES / "grace_hopper.jpg", "--url", f"127.0.0.1:{port}", "--output", out, "--wait-ready", "1"], tmp_path)
    stdout, stderr = client.communicate(timeout=120)
    assert client.returncode == 1, stderr
    line = _last_line(stderr)
    assert line.startswith("error: ") and f"127.0.0.1:{port}" in line and "not ready" in line and "within 1 s" in line, line
    assert "Traceback" not in stderr
    assert out.read_text() == "", "a failed run must not leave an older run's results looking current"


@pytest.mark.slow  # 17 s; test_server_killed_mid_batch_then_resume_loses_nothing keeps the outage path in the default suite
def test_server_restarted_mid_run_loses_no_image(tmp_path, photos):
    """The client waits for a restarting server (connection refused, then model not loaded yet): no error record, exit 0."""
    server = ServerProcess(REPOSITORY, tmp_path / "server.log", env=_env(tmp_path)).start()
    try:
        server.wait_ready()
        out = tmp_path / "results.jsonl"
        env, release = _hold(tmp_path, 5)
        # Retries are a hang guard here: enough back-off for a server restart on a slow machine.
        client = _recommend([photos[0].parent, "--url", server.grpc_url, "--output", out, "--workers", "1", "--retries", "20"],
                            tmp_path, env=env)
        _wait_for_records(out, 5, client)
        server.kill()
        server.start()  # same ports; the client resumes while it is still loading the model
        release.touch()
        stdout, stderr = client.communicate(timeout=300)
        assert client.returncode == 0, stderr[-2000:]
    finally:
        server.kill()
    records = _records(out)
    assert sorted(r["path"] for r in records) == sorted(str(p) for p in photos)
    assert [r["error"] for r in records if r["error"]] == []
    assert "retry 1/20" in stderr, "the client never saw the restart: the test did not test it"
