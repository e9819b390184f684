"""The benchmark machinery: the measurement protocol on the real model, and its outputs."""

from __future__ import annotations

import json

import pytest

from conftest import REPOSITORY


@pytest.fixture(scope="module")
def crops():
    from face2hbe.loadtest.crops import load_crops

    return load_crops(8)[0]


def test_measure_protocol_on_the_served_model(crops):
    """Two workers, closed loop, real onnxruntime: every worker runs and faces/s follows the counts."""
    from face2hbe.loadtest.bench.server import measure, ort_calls, ort_session
    from face2hbe.loadtest.crops import batch_of

    session = ort_session(REPOSITORY / "face2hbe" / "1" / "model.onnx")
    result = measure(ort_calls(session, [batch_of(crops, 2, 0), batch_of(crops, 2, 2)]), 2, seconds=0.3, warmup=1)
    assert result["requests"] >= 2  # at least one measured call per worker
    assert result["seconds"] >= 0.3
    assert result["faces_per_s"] == pytest.approx(result["requests"] * 2 / result["seconds"])


def test_ratios_table_json_and_chart(tmp_path, capsys):
    from face2hbe.loadtest.bench.server import Bench, Row, find_int8_model, print_table, row_dict, write_outputs

    bench = Bench()
    bench.add(Row("5 one model vs prototype", "prototype", 2.0))
    one = bench.add(Row("5 one model vs prototype", "one model", 10.0, baseline="prototype", goal=4.5))
    skipped = bench.add(Row("4 fp32 vs INT8", "INT8", None, note="skipped: no model"))
    assert one.ratio == pytest.approx(5.0) and one.meets_goal is True
    assert skipped.ratio is None and skipped.meets_goal is None
    result = {
        "command": "test",
        "quick": True,
        "seconds_per_row": 1,
        "warmup_requests": 1,
        "crops": "test",
        "machine": {"cpu": "cpu", "cores": 2, "load_average_start": [1, 1, 1], "load_average_end": [1, 1, 1]},
        "wall_s": 0.0,
        "rows": [row_dict(r) for r in bench.rows],
    }
    write_outputs(result, tmp_path)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert [r["name"] for r in saved["rows"]] == ["prototype", "one model", "INT8"]
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print_table(result)
    out = capsys.readouterr().out
    assert "5.00x" in out and "met" in out and "skipped: no model" in out
    assert find_int8_model(tmp_path) is None
    (tmp_path / "face2hbe_int8" / "1").mkdir(parents=True)
    (tmp_path / "face2hbe_int8" / "1" / "model.onnx").write_bytes(b"x")
    assert find_int8_model(tmp_path) == tmp_path / "face2hbe_int8" / "1" / "model.onnx"


@pytest.mark.slow  # reason: `bench --quick` measures every row for seconds each and starts two servers (~4 min on 2 cores)
def test_bench_quick_measures_every_row(tmp_path):
    from face2hbe.app.cli import main

    assert main(["bench", "--quick", "--output-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    groups = {r["group"][0] for r in result["rows"]}
    assert groups == {"1", "2", "3", "4", "5"}
    measured = [r for r in result["rows"] if not r["note"].startswith("skipped")]
    assert all(r["faces_per_s"] > 0 for r in measured)
    assert (tmp_path / "bench.png").is_file()


@pytest.mark.parametrize(
    "graphs, names, reason",
    [
        (1, [], "at least two graphs"),
        (2, ["only one"], "once per graph"),
        (2, ["same", "same"], "each different"),
    ],
)
def test_graph_cost_refuses_what_it_cannot_compare(graphs, names, reason):
    from click.testing import CliRunner

    from face2hbe.loadtest.bench.graph_cost import main

    paths = [str(REPOSITORY / "face2hbe_int8" / "1" / "model.onnx"), str(REPOSITORY / "face2hbe" / "1" / "model.onnx")][
        :graphs
    ]
    result = CliRunner().invoke(main, [*paths, *(a for n in names for a in ("--name", n))])
    assert result.exit_code == 2 and reason in result.output, result.output
