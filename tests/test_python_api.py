"""The Python API from any host program (issue #28): the README's examples, run as written, against the embedded server.

A script without a main guard, the same script on stdin and with `python -c`, a notebook-style cell with
top-level await in a running event loop, a web app's worker thread; and the waiting line and Ctrl-C of a
client whose server is not there.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from conftest import REPOSITORY, ROOT, SAMPLES, free_port

README_ADDRESS = "127.0.0.1:8001"
PHOTOS = ["grace_hopper.jpg", "astronaut_eileen_collins.jpg"]


def readme_blocks(section: str = "## Python API") -> list[str]:
    """The indented code blocks of one README section, dedented, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    body = text.split(f"\n{section}\n", 1)[1].split("\n## ", 1)[0]
    blocks, current = [], []
    for line in body.splitlines():
        if line.startswith("    ") or (current and not line.strip()):
            current.append(line)
        elif current:
            blocks.append(textwrap.dedent("\n".join(current)).strip() + "\n")
            current = []
    if current:
        blocks.append(textwrap.dedent("\n".join(current)).strip() + "\n")
    return blocks


def example(index: int, grpc_url: str) -> str:
    """README block `index` pointed at the test server (the README's address appears exactly once in it)."""
    code = readme_blocks()[index]
    assert code.count(README_ADDRESS) == 1, code
    return code.replace(README_ADDRESS, grpc_url)


@pytest.fixture
def workdir(tmp_path):
    """A folder as the README's example expects it: photo.jpg and photos/ (public-domain samples)."""
    shutil.copy(SAMPLES / PHOTOS[0], tmp_path / "photo.jpg")
    (tmp_path / "photos").mkdir()
    for name in PHOTOS:
        shutil.copy(SAMPLES / name, tmp_path / "photos" / name)
    return tmp_path


def check_results(folder) -> None:
    """results.jsonl: one record per photo in photos/, each with its one face."""
    records = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    assert sorted(r["path"] for r in records) == sorted(f"photos/{name}" for name in PHOTOS), records
    assert all(r["error"] is None and len(r["faces"]) == 1 for r in records), records


def test_readme_example_is_valid_python_and_complete():
    blocks = readme_blocks()
    assert len(blocks) == 3, blocks
    compile(blocks[0], "<script>", "exec")
    compile(blocks[1], "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)  # a notebook cell
    compile(blocks[2], "<script>", "exec")
    for code in blocks:
        assert code.startswith("from face2hbe.client"), code  # each block imports what it uses


@pytest.mark.parametrize("how", ["file", "stdin", "-c"])
def test_readme_example_runs_as_written(grpc_url, workdir, how):
    """No main guard: as a file, on stdin and with -c the script finishes, writes its results and exits 0."""
    code = example(0, grpc_url)
    script = workdir / "example.py"
    script.write_text(code)
    command = {
        "file": [sys.executable, str(script)],
        "stdin": [sys.executable, "-"],
        "-c": [sys.executable, "-c", code],
    }[how]
    proc = subprocess.run(
        command, cwd=workdir, input=code if how == "stdin" else None, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    check_results(workdir)
    face, summary = proc.stdout.splitlines()  # photo.jpg's one face, then the run's summary
    assert face.startswith("photo.jpg [") and summary == f"{len(PHOTOS)} photos, {len(PHOTOS)} faces, 0 errors", (
        proc.stdout
    )


@pytest.mark.slow  # starts a local Ray (10-20 s)
def test_readme_batch_example_runs_on_stdin_with_the_local_engine(workdir):
    """The batch block as written, fed on stdin: Ray's workers never import the caller's main module either."""
    (workdir / "model_repository").symlink_to(REPOSITORY)  # engine="local" reads ./model_repository
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env["RAY_DEFAULT_OBJECT_STORE_MEMORY_PROPORTION"] = "0.08"  # a small object store on a shared machine
    proc = subprocess.run(
        [sys.executable, "-"],
        input=readme_blocks()[2],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == f"{len(PHOTOS)} photos, {len(PHOTOS)} faces", proc.stdout
    assert list((workdir / "out" / "batch" / "results").glob("part-*.parquet"))


def test_readme_async_example_runs_as_a_notebook_cell(grpc_url, workdir, monkeypatch, capsys):
    """Top-level await compiled as IPython does, run in a running event loop; the sync calls refuse that loop."""
    monkeypatch.chdir(workdir)
    cell = compile(example(1, grpc_url), "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace: dict = {}

    async def kernel():
        await eval(cell, namespace)  # a coroutine: the cell awaits
        rec = namespace["Recommender"](grpc_url)
        with pytest.raises(RuntimeError, match=r"await Recommender\.arun\(\)"):
            rec.run(["photos/"], "other.jsonl")
        with pytest.raises(RuntimeError, match=r"await Recommender\.arecommend\(\)"):
            rec.recommend("photo.jpg")

    asyncio.run(kernel())
    assert len(namespace["result"].faces) == 1 and namespace["summary"].images == len(PHOTOS)
    assert not (workdir / "other.jsonl").exists()
    check_results(workdir)


def test_run_from_a_web_app_worker_thread_starts_no_process(grpc_url, workdir):
    """A request handler's thread calls the synchronous API; detection threads come and go with the call."""
    from face2hbe.client import Recommender

    before = {t.ident for t in threading.enumerate()}
    processes = set(psutil.Process().children(recursive=True))  # the embedded server's
    outcome = {}

    def during(result):  # while the run is under way
        outcome.setdefault("children", set(psutil.Process().children(recursive=True)) - processes)

    def handler():
        with Recommender(grpc_url, workers=2) as rec:
            outcome["summary"] = rec.run(
                [workdir / "photos"], workdir / "results.jsonl", progress=False, on_result=during
            )

    worker = threading.Thread(target=handler)
    worker.start()
    worker.join(timeout=300)
    assert not worker.is_alive()
    assert outcome["summary"].images == len(PHOTOS) and outcome["summary"].faces == len(PHOTOS)
    assert outcome["children"] == set()  # detection ran in threads, not in processes
    left = [t.name for t in threading.enumerate() if t.ident not in before and t.name.startswith("detect")]
    assert left == [], left


def _wait_for_line(proc, marker: str, timeout: float) -> list[str]:
    """stderr lines up to the first that contains `marker` (hang guard: `timeout`)."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"no {marker!r} line: {lines}")


def test_waiting_for_a_server_says_so_and_ctrl_c_ends_it(tmp_path):
    """No server at --url: one 'waiting up to ...' line at once; SIGINT then ends the wait: exit 130, no traceback."""
    port = free_port()  # nothing listens there
    out = tmp_path / "out.jsonl"
    argv = ["recommend", str(SAMPLES / PHOTOS[0]), "--url", f"127.0.0.1:{port}", "--output", str(out), "--no-progress"]
    # Python's own SIGINT handler, as in a terminal, even when this test runs where SIGINT is ignored (a background job).
    code = f"import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); from face2hbe.app.cli import main; sys.exit(main({argv!r}))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        lines = _wait_for_line(proc, "waiting up to", timeout=120)
        assert lines[-1].rstrip().endswith(f"waiting up to 60 s for face2hbe at 127.0.0.1:{port} ..."), lines
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        stopped_after = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "not ready" not in err, err  # stopped, not timed out
    assert stopped_after < 30, stopped_after  # hang guard only: it ends within about a second
    assert err.count("waiting up to") == 0  # the line was printed once (read above), not repeated
