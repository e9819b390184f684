"""`face2hbe loadtest`: a real headless Locust run on the real embedded Triton server."""

from __future__ import annotations

import csv
import json

from face2hbe.app.cli import main


def _stats(out):
    with (out / "locust_stats.csv").open(newline="") as f:
        return {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}


def test_loadtest_grpc_and_http_users_meet_a_loose_slo(tmp_path, capsys):
    """The command starts its own server, runs both user kinds and writes the reports and a passing verdict."""
    out = tmp_path / "run"
    code = main(
        [
            "loadtest",
            "--requests",
            "24",
            "--duration",
            "600",
            "--users",
            "4",
            "--spawn-rate",
            "4",
            "--batch-size",
            "2",
            "--output-dir",
            str(out),
            "--slo-p95-ms",
            "60000",
            "--slo-max-error-rate",
            "0",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert (out / "report.html").stat().st_size > 0
    stats = _stats(out)
    for kind in ("grpc", "http"):
        row = next(r for (t, _), r in stats.items() if t == kind)
        assert int(row["Request Count"]) > 0, f"no {kind} requests"
        assert int(row["Failure Count"]) == 0, f"{kind} requests failed"
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["passed"] is True
    assert verdict["requests"] >= 24 and verdict["failures"] == 0  # by count, not by the clock
    assert verdict["faces_per_s"] > 0
    assert "PASS" in capsys.readouterr().out


def test_loadtest_missed_slo_exits_non_zero(tmp_path, grpc_url, http_url, capsys):
    """Against an already running server: an impossible p95 fails the run with one error line."""
    out = tmp_path / "run"
    code = main(
        [
            "loadtest",
            "--grpc-url",
            grpc_url,
            "--http-url",
            http_url,
            "--requests",
            "10",
            "--duration",
            "600",
            "--users",
            "2",
            "--spawn-rate",
            "2",
            "--output-dir",
            str(out),
            "--slo-p95-ms",
            "0.001",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SLO missed: p95_ms" in err[0]
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["passed"] is False and verdict["requests"] > 0
    assert [c["name"] for c in verdict["checks"] if not c["ok"]] == ["p95_ms"]


def test_loadtest_refuses_non_loopback_targets(tmp_path, capsys):
    code = main(
        ["loadtest", "--grpc-url", "192.0.2.10:8001", "--http-url", "192.0.2.10:8000", "--output-dir", str(tmp_path)]
    )
    assert code == 1
    assert "loopback" in capsys.readouterr().err
    assert not (tmp_path / "verdict.json").exists()
