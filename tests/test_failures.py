"""Failures that tell the truth: a dead backend, a hung or huge request, a killed client, odd files, bad output.

Every kill happens at a point the test controls (a held client, a stopped process),
never after a guessed time; timeouts are hang guards only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest

from face2hbe import contract
from face2hbe.app.cli import main
from face2hbe.serving.process import ServerProcess

from conftest import REPOSITORY, SAMPLES, hold_at

MB = 1024 * 1024


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _tree_rss(pid: int) -> int:
    total = 0
    for proc in _tree(pid):
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def _stub(server: ServerProcess) -> psutil.Process:
    """The face2hbe model's one stub. A model's stubs share their model.py (argument 1); the photo model has 4."""
    groups: dict[str, list[psutil.Process]] = {}
    for p in _tree(server.proc.pid):
        if p.name() == "triton_python_backend_stub":
            groups.setdefault(p.cmdline()[1], []).append(p)
    (stub,) = [stubs[0] for stubs in groups.values() if len(stubs) == 1]
    return stub


def _infer(url: str, batch: np.ndarray, timeout: float = 120):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        inp = grpcclient.InferInput(contract.INPUT_NAME, list(batch.shape), contract.INPUT_DTYPE)
        inp.set_data_from_numpy(batch)
        return client.infer(contract.MODEL_NAME, [inp], client_timeout=timeout).as_numpy(contract.OUTPUT_NAME)
    finally:
        client.close()


@pytest.fixture(scope="module")
def own_server(tmp_path_factory):
    """A server of its own (these tests stop, overload and finally kill its backend)."""
    log = tmp_path_factory.mktemp("own-server") / "server.log"
    # The face model only: its memory after a refused request is measured, and the photo model's 4 stubs
    # could still be settling (importing, allocating) on a slow machine between the two readings.
    with ServerProcess(REPOSITORY, log, args=["--no-photo"]) as server:
        yield server


def test_server_that_never_answers_ends_the_run_with_one_line(tmp_path):
    """A peer that accepts connections and never answers: every wait is bounded, the run exits 1 with one line."""
    import socket

    from face2hbe.net import free_port

    port = free_port()
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", port))
        hole.listen(16)  # accepted by the kernel, never read or answered
        for protocol in ("grpc", "http"):
            out = tmp_path / f"{protocol}.jsonl"
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "face2hbe.app.cli",
                    "recommend",
                    str(SAMPLES / "grace_hopper.jpg"),
                    "--url",
                    f"127.0.0.1:{port}",
                    "--protocol",
                    protocol,
                    "--output",
                    str(out),
                    "--timeout",
                    "1",
                    "--wait-ready",
                    "2",
                    "--workers",
                    "1",
                    "--no-progress",
                ],
                capture_output=True,
                text=True,
                timeout=300,
            )
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 1, proc.stderr[-2000:]
            assert lines[-1].startswith("error: ") and "not ready" in lines[-1] and "Traceback" not in proc.stderr, (
                lines[-1]
            )
            assert out.read_text() == ""


def test_huge_request_is_refused_and_memory_comes_back(own_server):
    """A 512 MB request is refused (batch above max_batch_size) and the server gives the memory back."""
    _infer(own_server.grpc_url, np.zeros((contract.MAX_BATCH_SIZE, *contract.INPUT_SHAPE), np.uint8))  # warm
    before = _tree_rss(own_server.proc.pid)
    faces = 512 * MB // int(np.prod(contract.INPUT_SHAPE))
    with pytest.raises(Exception, match=r"(?i)batch-size must be <= 32|exceed|too large|RESOURCE_EXHAUSTED"):
        _infer(own_server.grpc_url, np.zeros((faces, *contract.INPUT_SHAPE), np.uint8))
    after = _tree_rss(own_server.proc.pid)
    print(f"\nserver tree RSS {before / MB:.0f} MB -> {after / MB:.0f} MB after a refused {faces}-face request")
    assert after - before < 100 * MB
    assert _infer(own_server.grpc_url, np.zeros((2, *contract.INPUT_SHAPE), np.uint8)).shape == (
        2,
        len(contract.LABELS),
    )


def test_dead_backend_takes_the_server_down(own_server):
    """Kill the model's backend process: the server stops answering ready and exits 1 with one line (last: it ends the server)."""
    stub = _stub(own_server)
    stub.kill()
    deadline = time.monotonic() + 10  # the bound for a dead backend to show
    ready = True
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{own_server.http_url}/v2/health/ready", timeout=2) as response:
                ready = response.status == 200
        except OSError:
            ready = False
        if not ready or own_server.proc.poll() is not None:
            break
        time.sleep(0.2)
    assert not ready or own_server.proc.poll() is not None, "still ready 10 s after its backend died"
    own_server.proc.wait(timeout=120)  # hang guard
    assert own_server.proc.returncode == 1
    log = own_server.log.read_text()
    assert "error: model backend process(es)" in log and "died" in log
    assert "Traceback" not in log


def test_leftovers_of_a_dead_server_are_removed_and_nothing_else(tmp_path):
    from face2hbe.serving.embedded import WORKSPACE_PREFIX, remove_leftovers

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tmp, shm = tmp_path / "tmp", tmp_path / "shm"
    for folder in (tmp, shm):
        folder.mkdir()
    crashed = tmp / f"{WORKSPACE_PREFIX}{dead.pid}-abc_1"
    alive = tmp / f"{WORKSPACE_PREFIX}{os.getpid()}-def_2"
    for workspace in (crashed, alive):
        (workspace / "models").mkdir(parents=True)
        (shm / f"{workspace.name}-shm-0ba24237").write_bytes(b"crop bytes")
    failed_log = tmp / f"{WORKSPACE_PREFIX}{dead.pid}-ghi.log"  # a failed start's log: its path was the error message
    failed_log.write_text("E1203 ...")
    (shm / "psm_someone_else").write_bytes(b"not ours")
    removed = remove_leftovers(tmp, shm)
    assert sorted(removed) == sorted([str(crashed), str(shm / f"{crashed.name}-shm-0ba24237")])
    assert sorted(p.name for p in tmp.iterdir()) == sorted([alive.name, failed_log.name])
    assert sorted(p.name for p in shm.iterdir()) == sorted([f"{alive.name}-shm-0ba24237", "psm_someone_else"])


def test_served_configs_hold_no_path(grpc_url):
    """Nothing in a served config names a folder or a file path (the workspace, the home folder, the repository)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    for model in (contract.MODEL_NAME, contract.PHOTO_MODEL_NAME):
        text = json.dumps(client.get_model_config(model, as_json=True)["config"])
        assert "/" not in text and "\\\\" not in text, (model, text)
    client.close()


def test_planted_bug_in_scoring_crashes_instead_of_becoming_a_record(grpc_url):
    """A TypeError in our own code is a bug: it propagates, it is never turned into an inference_error record."""
    import asyncio

    from face2hbe.client.inference import AsyncScorer, ClientSettings

    class Buggy(AsyncScorer):
        async def _infer(self, batch):
            raise TypeError("planted bug")

    async def run():
        async with Buggy(ClientSettings(url=grpc_url)) as scorer:
            await scorer.score(np.zeros((1, *contract.INPUT_SHAPE), np.uint8))

    with pytest.raises(TypeError, match="planted bug"):
        asyncio.run(run())


def test_output_errors_are_one_line(grpc_url, tmp_path, capsys):
    photo = str(SAMPLES / "grace_hopper.jpg")
    for output, reason in ((tmp_path, "Is a directory"), (Path("/dev/full"), "No space left on device")):
        code = main(["recommend", photo, "--url", grpc_url, "--output", str(output), "--workers", "1", "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and err[0].startswith("error: ") and reason in err[0], err
    assert Path("/dev/full").exists()  # the writer never removes what is not a regular file


def test_bad_url_is_refused(capsys):
    code = main(["recommend", str(SAMPLES / "grace_hopper.jpg"), "--url", "127.0.0.1:99999", "--no-progress"])
    assert code == 1 and "port in 1-65535" in capsys.readouterr().err


def test_fifo_and_device_files_get_records_and_the_run_finishes(grpc_url, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    os.mkfifo(folder / "fifo.jpg")  # nothing ever writes to it: opening it blocking would hang forever
    (folder / "zero.jpg").symlink_to("/dev/zero")  # reading it would never end
    (folder / "ok.jpg").symlink_to(SAMPLES / "grace_hopper.jpg")
    out = tmp_path / "out.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "face2hbe.app.cli",
            "recommend",
            str(folder),
            "--url",
            grpc_url,
            "--output",
            str(out),
            "--workers",
            "1",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = {Path(r["path"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert records["fifo.jpg"]["error"] == {"kind": "bad_image", "message": "not a regular file"}
    assert records["zero.jpg"]["error"] == {"kind": "bad_image", "message": "not a regular file"}
    assert records["ok.jpg"]["faces"]


def test_heic_photo_gets_a_record_and_skipped_files_are_counted(grpc_url, tmp_path):
    from PIL import Image
    from pillow_heif import register_heif_opener

    from face2hbe.client import Recommender

    register_heif_opener()  # to write the test photo; the client reads HEIC by itself
    folder = tmp_path / "phone"
    folder.mkdir()
    with Image.open(SAMPLES / "grace_hopper.jpg") as im:
        im.save(folder / "IMG_0001.HEIC")
    (folder / "notes.txt").write_text("not a photo")
    out = tmp_path / "out.jsonl"
    summary = Recommender(url=grpc_url, workers=1).run([folder], out, progress=False)
    (record,) = map(json.loads, out.read_text().splitlines())
    assert record["path"].endswith("IMG_0001.HEIC") and record["error"] is None and len(record["faces"]) == 1
    assert summary.ignored_files == {".txt": 1}


def test_killed_client_leaves_no_worker_behind(grpc_url, tmp_path):
    """Detection runs in the client's threads (issue #28): mid-run it has no child process, so a SIGKILL leaves none."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        (folder / f"{i}.jpg").symlink_to(SAMPLES / "grace_hopper.jpg")
    out = tmp_path / "out.jsonl"
    env = {**os.environ, **hold_at(tmp_path / "hold", "record", 1)[0]}  # held mid-run with its detection threads alive
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "face2hbe.app.cli",
            "recommend",
            str(folder),
            "--url",
            grpc_url,
            "--output",
            str(out),
            "--workers",
            "2",
            "--no-progress",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180  # hang guard
        while not (out.exists() and out.read_text().strip()) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        client = psutil.Process(proc.pid)
        assert client.children(recursive=True) == []  # no worker process (nor multiprocessing's resource tracker)
        assert client.num_threads() >= 2  # the detection threads (and gRPC's) are inside it
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_http_end_to_end_matches_grpc(grpc_url, http_url, tmp_path):
    from face2hbe.client import Recommender

    photos = [SAMPLES / "grace_hopper.jpg", SAMPLES / "astronaut_eileen_collins.jpg"]
    records = {}
    for protocol, url in (("grpc", grpc_url), ("http", http_url)):
        out = tmp_path / f"{protocol}.jsonl"
        Recommender(url=url, protocol=protocol, workers=1).run(photos, out, progress=False)
        records[protocol] = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records["http"]) == 2 and all(r["error"] is None for r in records["http"])
    for g, h in zip(records["grpc"], records["http"]):
        assert [f["box"] for f in g["faces"]] == [f["box"] for f in h["faces"]]
        for fg, fh in zip(g["faces"], h["faces"]):
            assert fg["scores"] == pytest.approx(fh["scores"], abs=1e-6)
        assert h["model"]["name"] == contract.MODEL_NAME and h["model"]["version"] == contract.MODEL_VERSION
        assert set(h["model"]["thresholds"]) == set(contract.LABELS)


def test_equal_faces_pick_the_one_nearest_the_centre():
    from PIL import Image

    from face2hbe.detection import detect_faces

    with Image.open(SAMPLES / "grace_hopper.jpg") as im:
        face = im.convert("RGB").crop((87, 46, 459, 418)).resize((200, 200))
    row = Image.new("RGB", (600, 200))
    for i in range(3):
        row.paste(face, (i * 200, 0))
    boxes = detect_faces(np.asarray(row))
    sides = [b.width for b in boxes]
    assert len(boxes) == 3 and max(sides) - min(sides) <= 3  # the same face three times: equally large
    assert 200 <= (boxes[0].left + boxes[0].right) / 2 <= 400  # the middle face, not the detector's first


def test_newline_in_a_file_name_cannot_forge_a_log_line(grpc_url, tmp_path, caplog):
    from face2hbe.client import Recommender

    bad = tmp_path / "x.jpg\nERROR forged line.jpg"
    bad.write_bytes(b"not an image")
    with caplog.at_level("ERROR"):
        Recommender(url=grpc_url, workers=1).run([bad], tmp_path / "out.jsonl", progress=False)
    messages = [r.getMessage() for r in caplog.records if "forged" in r.getMessage()]
    assert messages and all("\n" not in m for m in messages)


def test_report_shows_whole_names_when_not_a_terminal(grpc_url, tmp_path, capsys):
    long_name = tmp_path / ("a_rather_long_profile_photo_name_from_a_phone_backup_" + "x" * 40 + ".jpg")
    long_name.symlink_to(SAMPLES / "grace_hopper.jpg")
    assert (
        main(
            [
                "recommend",
                str(long_name),
                "--url",
                grpc_url,
                "--output",
                str(tmp_path / "o.jsonl"),
                "--workers",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    assert long_name.name in capsys.readouterr().out.replace("\n", "").replace("│", "").replace(" ", "")
