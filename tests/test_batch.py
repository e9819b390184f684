"""`face2hbe batch` on a local Ray over real photos: same results as recommend, exactly once under a killed worker."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from face2hbe.app.cli import main

from conftest import REPOSITORY, SAMPLES, SHARED_DATA, hold_at
from record_checks import contradictions

pytest.importorskip("ray.data", reason="the [batch] extra (ray[data]) is not installed")

LFW_PHOTOS = 20


def _lfw_paths() -> list[Path]:
    labels = SHARED_DATA / "lfw" / "labels.csv"
    if not labels.is_file():
        return []  # the bundled samples alone; LFW is added when ../shared/data has it
    with labels.open(newline="") as f:
        rows = list(csv.DictReader(f))
    step = max(1, len(rows) // LFW_PHOTOS)  # many people, not the first few only
    return [SHARED_DATA / "lfw" / rows[i]["path"] for i in range(0, step * LFW_PHOTOS, step)]


@pytest.fixture(scope="module")
def hold_folder(tmp_path_factory):
    """The test hook's folder (client/hold.py), in the environment before Ray starts: its workers inherit it."""
    from face2hbe.client.hold import ENV

    folder = tmp_path_factory.mktemp("hold")
    before = os.environ.get(ENV)
    os.environ[ENV] = str(folder)
    yield folder
    if before is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = before


@pytest.fixture(scope="module")
def ray_local(hold_folder):
    """One quiet local Ray for the module (run_batch uses it and leaves it running)."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _system_config={"automatic_object_spilling_enabled": False},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[list, list[str]]:
    """Inputs (the samples folder and a .txt list of LFW photos) and every image path they name."""
    lfw = [str(p) for p in _lfw_paths()]
    inputs = [str(SAMPLES)]
    if lfw:
        listing = tmp_path_factory.mktemp("inputs") / "lfw.txt"
        listing.write_text("# LFW photos\n" + "".join(f"{p}\n" for p in lfw))
        inputs.append(str(listing))
    from face2hbe.client.recommend import find_inputs

    return inputs, [str(p) for p, _ in find_inputs([SAMPLES])] + lfw


@pytest.fixture(scope="module")
def recommended(grpc_url, photos) -> dict[str, dict]:
    """recommend's record for every photo (Recommender.recommend: the same detection and scoring as `face2hbe recommend`)."""
    from face2hbe.client import Recommender

    with Recommender(url=grpc_url) as rec:
        return {path: json.loads(rec.recommend(path).to_json()) for path in photos[1]}


def _assert_same(batch_records: dict[str, dict], expected: dict[str, dict]) -> None:
    assert set(batch_records) == set(expected)
    faces = 0
    for path, want in expected.items():
        got = batch_records[path]
        assert got["error"] == want["error"], path
        assert [f["box"] for f in got["faces"]] == [f["box"] for f in want["faces"]], path
        for g, w in zip(got["faces"], want["faces"]):
            assert list(g["scores"]) == list(w["scores"]), path
            assert all(abs(g["scores"][k] - w["scores"][k]) <= 1e-5 for k in w["scores"]), (
                path,
                g["scores"],
                w["scores"],
            )
            assert g["labels"] == w["labels"] and g["attribute_labels"] == w["attribute_labels"], path
            assert [s["sku"] for s in g["skus"]] == [s["sku"] for s in w["skus"]], path
        assert got["top_label"] == want["top_label"] and got["reason"] == want["reason"], path
        assert (got["recommendation"] or {}).get("sku") == (want["recommendation"] or {}).get("sku"), path
        assert got.get("catalog") == want.get("catalog"), path
        faces += len(want["faces"])
    assert faces >= 2, "the photos must hold faces for the comparison to mean anything"


def _jsonl(path: Path) -> dict[str, dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == len({r["path"] for r in records})
    return {r["path"]: r for r in records}


def test_batch_on_triton_equals_recommend(ray_local, grpc_url, photos, recommended, tmp_path, capsys):
    """The CLI over folders and a .txt list against the real embedded Triton: recommend's results, Parquet + JSONL."""
    import pyarrow.parquet as pq

    from face2hbe.client.batch import read_output, record_from_row
    from face2hbe.client.recommend import find_inputs

    out = tmp_path / "batch"
    rc = main(
        [
            "batch",
            *photos[0],
            "--url",
            grpc_url,
            "--output",
            str(out),
            "--jsonl",
            str(tmp_path / "b.jsonl"),
            "--no-progress",
            "--images-per-task",
            "4",
        ]
    )
    report = capsys.readouterr().out
    assert rc == 0, report
    _assert_same(_jsonl(tmp_path / "b.jsonl"), recommended)
    rows = read_output(out)
    assert len(rows) == len(photos[1]) and all(len(r["sha256"]) == 64 for r in rows)
    assert {(r["model_name"], r["model_version"], r["engine"]) for r in rows} == {("face2hbe", "1", "triton")}
    assert dict(rows[0]["thresholds"]).keys() == {"eyewear", "beard", "hat"}
    production = next(iter(recommended.values()))["model"]["production_labels"]
    assert all(r["production_labels"] == production for r in rows)
    for row in rows:  # the Parquet rows, re-decided from their own columns (issue #27)
        record = {
            **record_from_row(row),
            "model": {
                "thresholds": dict(row["thresholds"]),
                "production_labels": row["production_labels"],
                "attribute_thresholds": dict(row["attribute_thresholds"]),
            },
        }
        assert not contradictions(record), (row["path"], contradictions(record))
    profiles = pq.read_table(out / "profiles.parquet").to_pylist()
    assert [p["profile"] for p in profiles] == [str(SAMPLES)] and profiles[0]["images"] == len(find_inputs([SAMPLES]))
    assert "Summary" in report and "stage ScoreStage" in report and "rows in the output (all runs)" in report


def test_local_engine_manifest_and_bad_images(ray_local, grpc_url, photos, recommended, tmp_path, capsys):
    """--engine local (onnxruntime in the actors) from a Parquet manifest to a file:// output: the same results;
    bad files become error rows, exit 1."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from face2hbe.client.batch import read_output

    corrupt, empty = tmp_path / "corrupt.jpg", tmp_path / "empty.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG" * 10)
    empty.write_bytes(b"")
    missing = tmp_path / "missing.jpg"
    paths = photos[1] + [str(corrupt), str(empty), str(missing)]
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"path": paths, "profile": ["p"] * len(paths)}), manifest)
    out = tmp_path / "batch"
    rc = main(
        [
            "batch",
            str(manifest),
            "--engine",
            "local",
            "--repository",
            str(REPOSITORY),
            "--output",
            f"file://{out}",  # a pyarrow URI
            "--jsonl",
            str(tmp_path / "b.jsonl"),
            "--no-progress",
        ]
    )
    report = capsys.readouterr().out
    assert rc == 1, report
    records = _jsonl(tmp_path / "b.jsonl")
    errors = {p: records.pop(p)["error"] for p in (str(corrupt), str(empty), str(missing))}
    assert {p: e["kind"] for p, e in errors.items()} == dict.fromkeys(errors, "bad_image")
    assert errors[str(empty)]["message"] == "empty file (0 bytes)"
    assert errors[str(missing)]["message"] == "cannot read file (No such file or directory)"
    assert errors[str(corrupt)]["message"].startswith("corrupt or truncated image")
    from face2hbe.client import Recommender

    with Recommender(url=grpc_url) as rec:  # recommend says the same about each bad file
        assert errors == {p: rec.recommend(p).error for p in errors}
    _assert_same(records, recommended)
    assert {r["engine"] for r in read_output(out)} == {"local"}
    assert "error rows in the output: bad_image" in report


def _ray_worker_pids(operator: str) -> set[int]:
    """Processes of Ray workers running `operator` (Ray titles them "ray::<task or actor>")."""
    import psutil

    pids = set()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "ray::" in cmdline and operator in cmdline:
            pids.add(proc.info["pid"])
    return pids


def _kill_mid_run(grpc_url, photos, tmp_path, hold_folder: Path, stage: str, operator: str) -> None:
    """SIGKILL the worker of `stage` while it holds a batch (after 4 images, by the test hook), then check
    every image is in the output exactly once, and that a rerun skips them all."""
    import psutil

    from face2hbe.client.batch import BatchSettings, read_output, run_batch
    from face2hbe.client.inference import ClientSettings

    out = tmp_path / "batch"
    settings = BatchSettings(
        output=out, client=ClientSettings(url=grpc_url), progress=False, images_per_task=2, rows_per_part=4
    )
    _, release = hold_at(hold_folder, stage, 4)  # the stage's first worker past 4 images holds, once
    box: dict = {}

    def job():
        try:
            box["summary"] = run_batch(photos[0], settings)
        except BaseException as exc:  # reported by the assertion below
            box["error"] = exc

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    marker = hold_folder / f"{stage}.pid"
    deadline = time.monotonic() + 180  # hang guard only
    while not marker.exists() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), f"the {stage} worker never held: {box.get('error')!r}"
    pid = int(marker.read_text())
    assert pid in _ray_worker_pids(operator), (pid, operator, _ray_worker_pids("ray::"))
    os.kill(pid, signal.SIGKILL)
    (hold_folder / stage).unlink()  # no more holds in this module's Ray
    thread.join(timeout=240)
    assert not thread.is_alive(), "the batch job did not finish after the kill"
    assert "error" not in box, box.get("error")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    counts = Counter(r["path"] for r in read_output(out))
    assert set(counts) == set(photos[1]) and set(counts.values()) == {1}, counts
    assert box["summary"].output_rows == len(photos[1]) and not box["summary"].output_errors

    again = run_batch(photos[0], BatchSettings(output=out, client=ClientSettings(url=grpc_url), progress=False))
    assert (again.images, again.skipped) == (0, len(photos[1]))
    assert Counter(r["path"] for r in read_output(out)) == counts


def test_killed_scoring_worker_every_image_once_and_rerun_adds_nothing(
    ray_local, hold_folder, grpc_url, photos, tmp_path
):
    """A scoring actor SIGKILLed mid-call: Ray restarts it and retries its calls (max_restarts, max_task_retries)."""
    _kill_mid_run(grpc_url, photos, tmp_path, hold_folder, "score", "ScoreStage")


@pytest.mark.slow
def test_killed_detection_worker_every_image_once(ray_local, hold_folder, grpc_url, photos, tmp_path):
    """A detection task's worker process SIGKILLed mid-task: Ray reruns the task (max_retries)."""
    _kill_mid_run(grpc_url, photos, tmp_path, hold_folder, "prepare", "prepare_stage")


def test_reconcile_drops_duplicates_and_retryable_errors(tmp_path):
    """Parts left by a killed write (same rows twice) and server errors: one row per key, errors retried."""
    import pyarrow as pa

    from face2hbe.client.batch.store import OutputStore, part_name, read_output, reconcile, schema

    def row(path, kind=None):
        return {
            "path": path,
            "sha256": "ab" * 32,
            "error": {"kind": kind, "message": "x"} if kind else None,
            "error_kind": kind,
        }

    def write(rows):
        name = part_name((r["path"], r["sha256"]) for r in rows)
        store.write_atomic(pa.Table.from_pylist(rows, schema=schema()), name)

    store = OutputStore(f"file://{tmp_path}")  # the pyarrow filesystem path, as for s3:// outputs
    write([row("a"), row("b")])
    write([row("b"), row("c", "server_unavailable"), row("d", "bad_image")])
    write([row("e"), row("e")])  # a duplicate inside one part: its rewrite keeps the part's name
    (tmp_path / "results" / ".part-3.parquet.1.2.tmp").write_bytes(b"cut short")
    keys, kept, dropped = reconcile(tmp_path, drop_retryable=False)
    assert (kept, dropped) == (5, 2) and sorted(r["path"] for r in read_output(tmp_path)) == ["a", "b", "c", "d", "e"]
    keys, kept, dropped = reconcile(str(tmp_path), drop_retryable=True)
    assert (kept, dropped) == (4, 1) and {p for p, _ in keys} == {"a", "b", "d", "e"}
    assert sorted(r["path"] for r in read_output(f"file://{tmp_path}")) == ["a", "b", "d", "e"]
    assert not list((tmp_path / "results").glob(".*"))


def test_server_down_is_a_one_line_error(ray_local, tmp_path, capsys):
    """No Triton at --url: the scoring actors cannot start; the CLI says why in one line and exits 1, writing nothing."""
    from conftest import free_port

    out = tmp_path / "batch"
    rc = main(
        [
            "batch",
            str(SAMPLES),
            "--url",
            f"127.0.0.1:{free_port()}",
            "--wait-ready",
            "1",
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-1].startswith("error: model 'face2hbe' not ready at 127.0.0.1:") and "within 1 s" in err[-1], err[-1]
    assert not list((out / "results").glob("*.parquet"))


def _stage_lines(text: str) -> list[str]:
    return [
        line
        for line in text.splitlines()
        if re.search(r"face2hbe\.client\.batch: stage .+: \d+ images, \d+ tasks", line)
    ]


def test_quiet_log_one_line_per_stage(ray_local, tmp_path, capfd, caplog):
    """stdout not a terminal, progress on: one log line per stage; none of Ray Data's progress blocks, nor the
    `core_worker.cc ... max_restarts` line Ray prints for every actor pool (it reaches fd 2, where capfd looks)."""
    import logging

    from face2hbe.client.batch import BatchSettings, run_batch
    from face2hbe.client.ray_runtime import stage_line

    caplog.set_level(logging.INFO, logger="face2hbe.client.batch")
    summary = run_batch([str(SAMPLES)], BatchSettings(output=tmp_path / "batch", engine="local", repository=REPOSITORY))
    print("after the run", file=sys.stderr, flush=True)  # fd 2 is this process's again
    out, err = capfd.readouterr()
    assert summary.images > 0 and not summary.errors
    stages = [
        r.getMessage()
        for r in caplog.records
        if r.name == "face2hbe.client.batch" and r.getMessage().startswith("stage ")
    ]
    assert stages == [stage_line(s) for s in summary.stages] and len(stages) == len(summary.stages) >= 3, stages
    assert any("ScoreStage" in s for s in stages) and any("prepare_stage" in s for s in stages), stages
    noise = [
        line
        for line in (out + err).splitlines()
        if "core_worker.cc" in line
        or "max_restarts" in line
        or "logging_progress" in line
        or "Total Progress" in line
        or "Progress bars disabled" in line
        or "execution finished" in line
    ]
    assert not noise, noise
    assert "after the run" in err


@pytest.mark.slow
def test_cli_log_is_quiet(tmp_path):
    """The real command on its own local Ray, output to a pipe: its stderr is one line per stage and nothing from Ray."""
    import subprocess

    job = subprocess.run(
        [
            sys.executable,
            "-m",
            "face2hbe.app.cli",
            "batch",
            str(SAMPLES),
            "--engine",
            "local",
            "--repository",
            str(REPOSITORY),
            "--output",
            str(tmp_path / "batch"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    assert job.returncode == 0, job.stderr
    lines = job.stderr.splitlines()
    stages = _stage_lines(job.stderr)
    assert len(stages) >= 3 and len({s.split(":")[1] for s in stages}) == len(stages), stages  # one line per stage
    assert lines == stages, lines  # and nothing else: no token-auth warning, no core_worker line, no progress blocks
    assert "stage ScoreStage" in job.stdout and "Ray start-up" in job.stdout
