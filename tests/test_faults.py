"""Faults injected into a real server process: killed mid-batch, broken repository, down at start.

The server runs as `python -m face2hbe.app.cli serve` in its own process group, so
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

from face2hbe import contract
from face2hbe.serving.process import ServerProcess

from conftest import REPOSITORY, SAMPLES, SHARED_DATA, free_port, hold_at

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
    cmd = [sys.executable, "-m", "face2hbe.app.cli", "recommend", *map(str, args), "--no-progress"]
    return subprocess.Popen(
        cmd,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**_env(tmp_path), **(env or {})},
        **popen,
    )


def _hold(tmp_path, after: int) -> tuple[dict, Path]:
    """The client waits after its `after`-th record until the returned file exists: the test's kill point."""
    return hold_at(tmp_path / "hold", "record", after)


def _wait_for_records(out: Path, count: int, proc, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout  # a hang guard only: the client holds at `count` by itself
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and len(out.read_text().splitlines()) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(
        f"client ended or hung before {count} records:\n{proc.communicate()[1][-2000:] if proc.poll() is not None else ''}"
    )


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
        args = [
            photos[0].parent,
            "--url",
            server.grpc_url,
            "--output",
            out,
            "--workers",
            "1",
            "--retries",
            "2",
            "--timeout",
            "5",
        ]
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
            [
                sys.executable,
                "-m",
                "face2hbe.app.cli",
                "serve",
                "--repository",
                str(repo),
                "--precision",
                "fp32",
                "--http-port",
                ports[0],
                "--grpc-port",
                ports[1],
                "--metrics-port",
                ports[2],
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(tmp_path),
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
    client = _recommend(
        [SAMPLES / "grace_hopper.jpg", "--url", f"127.0.0.1:{port}", "--output", out, "--wait-ready", "1"], tmp_path
    )
    stdout, stderr = client.communicate(timeout=120)
    assert client.returncode == 1, stderr
    line = _last_line(stderr)
    assert (
        line.startswith("error: ") and f"127.0.0.1:{port}" in line and "not ready" in line and "within 1 s" in line
    ), line
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
        client = _recommend(
            [photos[0].parent, "--url", server.grpc_url, "--output", out, "--workers", "1", "--retries", "20"],
            tmp_path,
            env=env,
        )
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


def _status(url: str) -> int | str:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError as exc:
        return type(exc).__name__


def _mine(tmp: Path, pid: int) -> tuple[list[str], list[str]]:
    """(workspaces in `tmp`, /dev/shm regions) of the server whose `face2hbe serve` process is `pid`."""
    from face2hbe.serving.embedded import WORKSPACE_PREFIX

    prefix = f"{WORKSPACE_PREFIX}{pid}-"
    return sorted(p.name for p in tmp.glob(f"{prefix}*")), sorted(p.name for p in Path("/dev/shm").glob(f"{prefix}*"))


def test_killed_server_leaves_nothing_after_the_next_start_and_ready_waits_for_every_model(tmp_path):
    """SIGKILL to the whole process tree, then a new start: nothing of the old server is left in /dev/shm (the Python
    backend's regions carry face crops) or the temp folder. Readiness, polled from the moment each start begins, is
    never 200 while a model is not ready."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    server = ServerProcess(REPOSITORY, tmp_path / "server.log", env=_env(tmp))

    def start_and_poll() -> int:
        server.start()
        polls, deadline = 0, time.monotonic() + 300  # hang guard
        while time.monotonic() < deadline:
            assert server.proc.poll() is None, server.log_tail()
            ready = _status(f"http://{server.http_url}/v2/health/ready")
            polls += 1
            if ready == 200:
                for model in (contract.MODEL_NAME, contract.PHOTO_MODEL_NAME):
                    assert _status(f"http://{server.http_url}/v2/models/{model}/ready") == 200, model
                return polls
            time.sleep(0.05)
        raise AssertionError(f"not ready: {server.log_tail()}")

    try:
        assert start_and_poll() > 1  # polled before it was ready, not only after
        _infer_photo(server.grpc_url)  # the photo model's regions hold a face crop now
        first = server.proc.pid
        workspaces, regions = _mine(tmp, first)
        assert len(workspaces) == 1 and len(regions) >= 5, (workspaces, regions)  # one region per model instance
        server.kill()  # no clean-up runs: everything of it stays
        assert _mine(tmp, first) == (workspaces, regions)
        start_and_poll()
        assert _mine(tmp, first) == ([], []), "the new start left the killed server's workspace or shared memory"
        assert len(_mine(tmp, server.proc.pid)[0]) == 1
    finally:
        server.stop()
    from face2hbe.serving.embedded import WORKSPACE_PREFIX

    # A clean stop leaves nothing either (onnxruntime's own session file, .ses, is no server's: it stays).
    assert _mine(tmp, server.proc.pid) == ([], []) and not list(tmp.glob(f"{WORKSPACE_PREFIX}*"))


def _infer_photo(url: str) -> None:
    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    inp = grpcclient.InferInput(contract.PHOTO_INPUT_NAME, [1], contract.PHOTO_INPUT_DTYPE)
    inp.set_data_from_numpy(np.array([(SAMPLES / "grace_hopper.jpg").read_bytes()], dtype=object))
    assert len(client.infer(contract.PHOTO_MODEL_NAME, [inp], client_timeout=120).as_numpy(contract.BOXES_NAME)) == 1
    client.close()


def test_busy_ports_are_one_line_and_exit_code_2(server, tmp_path):
    """A second server on the ports the first one holds: exit code 2 within 5 s, one line naming the port (and its
    holder), nothing new in the temp folder."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    s = server.settings
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "face2hbe.app.cli",
            "serve",
            "--repository",
            str(REPOSITORY),
            "--http-port",
            str(free_port()),
            "--grpc-port",
            str(s.grpc_port),
            "--metrics-port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        env=_env(tmp),
        timeout=60,
    )
    elapsed = time.monotonic() - started
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 2, lines
    assert lines == [lines[0]] and lines[0].startswith(
        f"error: gRPC port {s.grpc_port} on 127.0.0.1 is in use by tritonserver (pid "
    ), lines
    assert elapsed < 5, f"{elapsed:.1f} s"
    assert list(tmp.iterdir()) == []


def test_a_model_that_fails_to_load_is_one_line_and_the_path_of_the_full_log(tmp_path):
    """tritonserver exits (--exit-on-error) when the photo model's initialize raises: `face2hbe serve` exits 1 with one
    line (Triton's reason, without the traceback) and the path of the server log it kept; its workspace is gone."""
    repo, tmp = tmp_path / "repository", tmp_path / "tmp"
    tmp.mkdir()
    for name in (contract.INT8_MODEL_NAME, contract.PHOTO_MODEL_NAME):
        shutil.copytree(REPOSITORY / name, repo / name, ignore=shutil.ignore_patterns("*.onnx", "model.py"))
    (repo / contract.INT8_MODEL_NAME / "1" / "model.onnx").symlink_to(
        REPOSITORY / contract.INT8_MODEL_NAME / "1" / "model.onnx"
    )
    (repo / contract.PHOTO_MODEL_NAME / "1" / "model.py").write_text('raise ImportError("planted: no such module")\n')
    ports = [str(free_port()) for _ in range(3)]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "face2hbe.app.cli",
            "serve",
            "--repository",
            str(repo),
            "--http-port",
            ports[0],
            "--grpc-port",
            ports[1],
            "--metrics-port",
            ports[2],
        ],
        capture_output=True,
        text=True,
        env=_env(tmp),
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    line = proc.stderr.strip()
    assert line.startswith("error: tritonserver did not start: failed to load 'face2hbe_photo' version 1: ")
    assert "ImportError: planted: no such module; full log: " in line, line
    log = Path(line.rsplit("; full log: ", 1)[1])
    assert log.parent == tmp and "Traceback" not in line and "At:" in log.read_text()
    assert [p.name for p in tmp.iterdir() if p.name.startswith("face2hbe-serve-")] == [log.name]


@pytest.mark.slow  # two full starts of the server pinned to one core; `tools/cold_starts.py --starts 20 --cpus 0` is the full check
def test_cold_starts_on_one_core_are_clean():
    """Each start until every model is ready, then SIGTERM: exit 0, no ERROR line, traceback or retry (tools/cold_starts.py)."""
    proc = subprocess.run(
        [
            sys.executable,
            str(REPOSITORY.parent / "tools" / "cold_starts.py"),
            "--starts",
            "2",
            "--cpus",
            "0",
            "--repository",
            str(REPOSITORY),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2/2 clean starts" in proc.stdout
