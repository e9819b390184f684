"""`face2hbe batch --address` on a real two-node Ray cluster started on this machine (issue #25).

A head (`ray start --head`) and a second node (`ray start --address HEAD`) with one CPU each, so
the job's two detection tasks at a time (`--cpu-workers 2`, a CPU each) land one per node. The job is
the real command, in its own process, scoring on the session's embedded Triton server; every
image is in the output once, the rows equal recommend's, and the job's summary counts images
detected on both nodes. The nodes run as `ray start --block` processes of this test: at the end,
pass or fail, their process trees and nothing else are stopped (`ray stop` would stop every Ray on
the machine).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from face2hbe.net import free_port

from conftest import SAMPLES
from test_batch import _assert_same, _jsonl, _lfw_paths

pytest.importorskip("ray.data", reason="the [batch] extra (ray[data]) is not installed")
psutil = pytest.importorskip("psutil")

RAY = Path(sys.executable).with_name("ray")
# Ray 2.60's `ray start --head` turns token authentication on; every other node and driver says so too
# (the token itself is the machine's ~/.ray/auth_token, which the head created if it was missing).
ENV = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "token"}
START_TIMEOUT_S = 240  # hang guard only: a node start on a busy 2-core machine takes 10-30 s


def _node_ports() -> list[str]:
    """Every port a node listens on, free ones (other Rays on this machine use Ray's fixed defaults)."""
    return [
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
    ]


class Node:
    """One `ray start --block` process; `stop()` ends its process tree (raylet, GCS, workers ...) and only that."""

    def __init__(self, name: str, args: list[str], log: Path):
        self.name, self.log = name, log
        self.out = log.open("w")
        self.proc = subprocess.Popen(
            [str(RAY), "start", "--block", "--disable-usage-stats", "--include-log-monitor=false", *args],
            stdout=self.out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=ENV,
        )

    def wait_started(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if "Ray runtime started." in self.log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        pytest.fail(
            f"ray node {self.name} did not start (exit {self.proc.poll()}):\n{self.log.read_text(errors='replace')[-3000:]}"
        )

    def tree(self) -> list:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        procs = self.tree()
        for proc in procs:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=20)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)
        self.out.close()


@pytest.fixture
def two_nodes():
    """A head and a second node, one CPU each; yields the head's GCS address; stops both, however the test ends."""
    temp = tempfile.mkdtemp(prefix="f2r-")  # short: Ray's socket paths live under it
    port = free_port()
    nodes = []
    try:
        head = Node(
            "head",
            [
                "--head",
                f"--port={port}",
                "--num-cpus=1",
                "--include-dashboard=false",
                f"--ray-client-server-port={free_port()}",
                f"--temp-dir={temp}",
                *_node_ports(),
            ],
            Path(temp) / "head.log",
        )
        nodes.append(head)
        head.wait_started()
        second = Node(
            "second", [f"--address=127.0.0.1:{port}", "--num-cpus=1", *_node_ports()], Path(temp) / "second.log"
        )
        nodes.append(second)
        second.wait_started()
        yield f"127.0.0.1:{port}"
    finally:
        for node in reversed(nodes):
            node.stop()
        leftovers = [p.pid for node in nodes for p in node.tree()]
        if not leftovers:
            shutil.rmtree(temp, ignore_errors=True)  # the nodes' session folders and logs
        assert not leftovers, f"ray processes left running: {leftovers}"


@pytest.mark.slow
def test_batch_on_two_nodes_detects_on_both_once_each_as_recommend(two_nodes, grpc_url, tmp_path):
    """The CLI on a two-node cluster: every image once, detection on both nodes, recommend's rows."""
    from face2hbe.client import Recommender
    from face2hbe.client.batch import read_output
    from face2hbe.client.recommend import find_inputs

    lfw = [str(p) for p in _lfw_paths()]
    listing = tmp_path / "photos.txt"
    listing.write_text("".join(f"{p}\n" for p in lfw))
    paths = [str(p) for p, _ in find_inputs([SAMPLES])] + lfw
    out, jsonl = tmp_path / "batch", tmp_path / "batch.jsonl"
    job = subprocess.run(
        [
            sys.executable,
            "-m",
            "face2hbe.app.cli",
            "batch",
            str(SAMPLES),
            str(listing),
            "--address",
            two_nodes,
            "--url",
            grpc_url,
            "--output",
            str(out),
            "--jsonl",
            str(jsonl),
            "--images-per-task",
            "2",
            "--cpu-workers",
            "2",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=ENV,
    )
    report = job.stdout + job.stderr
    assert job.returncode == 0, report[-3000:]

    counts = Counter(r["path"] for r in read_output(out))
    assert set(counts) == set(paths) and set(counts.values()) == {1}, counts  # exactly once
    with Recommender(url=grpc_url) as rec:
        expected = {p: json.loads(rec.recommend(p).to_json()) for p in paths}
    _assert_same(_jsonl(jsonl), expected)

    row = re.search(r"images detected per node \((\d+) nodes?\)\s*│\s*([^│]+)│", report)
    assert row, report[-3000:]
    per_node = {node: int(n) for node, n in re.findall(r"([0-9a-f]{12}) (\d+)", row.group(2))}
    assert int(row.group(1)) == 2 and len(per_node) == 2 and all(per_node.values()), row.group(0)
    assert sum(per_node.values()) == len(paths), (per_node, len(paths))
    assert "core_worker.cc" not in report and "max_restarts" not in report, report[-3000:]
