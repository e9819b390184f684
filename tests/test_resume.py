"""`face2hbe recommend --resume` after a run killed midway: exactly one record (and picture) per image."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

from face2hbe.client.annotate import annotated_path

from conftest import hold_at

PHOTOS = 30


def _records(path):
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def test_resume_after_sigkill_gives_one_record_per_image(grpc_url, lfw_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rows = list(csv.DictReader((lfw_dir / "labels.csv").open()))[:PHOTOS]
    for r in rows:
        (folder / (lfw_dir / r["path"]).name).symlink_to(lfw_dir / r["path"])
    expected = sorted(str(p) for p in folder.iterdir())
    out, pictures = tmp_path / "results.jsonl", tmp_path / "annotated"
    command = [
        sys.executable,
        "-m",
        "face2hbe.app.cli",
        "recommend",
        str(folder),
        "--url",
        grpc_url,
        "--output",
        str(out),
        "--annotate",
        str(pictures),
        "--no-progress",
        "--workers",
        "1",
        "--in-flight",
        "1",
    ]

    # Its own session, so the kill reaches the detection workers too. The client holds after its
    # 3rd record (the test hook), so the kill lands mid-run on any machine; other images are in flight.
    env = {**os.environ, **hold_at(tmp_path / "hold", "record", 3)[0]}
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, env=env)
    deadline = time.monotonic() + 120  # hang guard
    try:
        while len(_records(out)) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, (
        f"run ended before the kill (rc {proc.returncode}): {stderr.decode()[-2000:]}"
    )

    partial = _records(out)
    assert 3 <= len(partial) < PHOTOS, len(partial)
    # flushed line by line: every line but possibly the last (cut by the kill) is a whole record.
    done = [json.loads(line)["path"] for line in partial[:-1]]
    assert len(set(done)) == len(done) and set(done) <= set(expected)

    resumed = subprocess.run([*command, "--resume"], capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    records = [json.loads(line) for line in _records(out)]
    assert sorted(r["path"] for r in records) == expected  # each image exactly once, none missing
    assert all(r["error"] is None for r in records), [r["error"] for r in records if r["error"]]
    for r in records:
        assert annotated_path(pictures, r["path"], r["profile"]).is_file(), r["path"]
    # One picture per photo; a picture cut by the kill (hidden .tmp) was cleaned up by the rerun.
    assert len([p for p in pictures.rglob("*") if p.is_file()]) == PHOTOS
