"""The CPU serving default, chosen by measurement: fp32 / INT8 x mirror-averaged / plain graph.

    python -m face2hbe.loadtest.bench.cpu_variants --output docs/bench/cpu-variants.json

For each of the four graphs (the repository's two files; "plain" derived in memory by
face2hbe.graphs.plain_graph): faces/s through onnxruntime at batch 1, 8 and 32, timed
interleaved round by round so that the ratios hold on a shared machine, and ROC AUC per
label on the CelebA and LFW test splits (the seeded identity split training and
`face2hbe evaluate` use; LFW through real detection). Writes JSON and prints a Markdown table.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from face2hbe import contract
from face2hbe.export.quantize import faces_per_second
from face2hbe.graphs import cpu_session, score_crops
from face2hbe.metrics import roc_aucs
from face2hbe.paths import DEFAULT_DATA
from face2hbe.repository import ONNX_FILE

VARIANTS = (("fp32", "mirror"), ("fp32", "plain"), ("int8", "mirror"), ("int8", "plain"))
BATCHES = (1, 8, 32)


def sessions(repository: Path, threads: int | None) -> dict[str, object]:
    files = {
        "fp32": repository / contract.MODEL_NAME / contract.MODEL_VERSION / ONNX_FILE,
        "int8": repository / contract.INT8_MODEL_NAME / contract.MODEL_VERSION / ONNX_FILE,
    }
    return {
        f"{precision} {graph}": cpu_session(files[precision], graph, threads, spin=True)
        for precision, graph in VARIANTS
    }


def test_crops(data: str, cache_dir: Path | None):
    """(crops, targets for LABELS) of a data spec's test split, as `face2hbe thresholds` and `evaluate` build them."""
    from face2hbe.training.domains import load_domain

    domain = load_domain(data, "test", cache_dir, progress=False)
    return domain.crops, domain.targets[:, : len(contract.LABELS)]


def auc_per_label(targets: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    return {
        label: None if auc is None else round(auc, 4)
        for label, auc in roc_aucs(targets, scores, contract.LABELS).items()
    }


def markdown(result: dict) -> str:
    sets = list(result["auc"])
    head = (
        "| graph | "
        + " | ".join(f"faces/s b{b}" for b in BATCHES)
        + " | "
        + " | ".join(f"{s} AUC {label}" for s in sets for label in contract.LABELS)
        + " |"
    )
    lines = [head, "|" + "---|" * (1 + len(BATCHES) + len(sets) * len(contract.LABELS))]
    for name in result["faces_per_second"]:
        fps = result["faces_per_second"][name]
        aucs = [result["auc"][s][name][label] for s in sets for label in contract.LABELS]
        lines.append(
            f"| {name} | "
            + " | ".join(f"{fps[str(b)]:.1f}" for b in BATCHES)
            + " | "
            + " | ".join("n/a" if a is None else f"{a:.4f}" for a in aucs)
            + " |"
        )
    return "\n".join(lines)


@click.command()
@click.option(
    "--repository", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path("model_repository")
)
@click.option(
    "--data",
    "data_specs",
    multiple=True,
    default=DEFAULT_DATA,
    show_default=True,
    help="Labelled sets (KIND:PATH) whose test split gives the AUC columns.",
)
@click.option("--rounds", default=9, show_default=True, help="Timed runs per graph and batch size (median kept).")
@click.option(
    "--threads", type=int, default=None, help="onnxruntime intra-op threads (default: onnxruntime's, all cores)."
)
@click.option(
    "--cache-dir", type=click.Path(path_type=Path), default=None, help="Cache of the test crops (training data only)."
)
@click.option("--output", type=click.Path(path_type=Path), default=None, help="Write the measurements as JSON here.")
def main(repository, data_specs, rounds, threads, cache_dir, output):
    from face2hbe.paths import portable_spec

    from .common import machine_info

    runs = sessions(repository, threads)
    result = {
        "machine": machine_info(),
        "threads": threads,
        "rounds": rounds,
        "faces_per_second": {n: {} for n in runs},
        "auc": {},
    }
    timing_crops = None
    for spec in data_specs:
        crops, targets = test_crops(spec, cache_dir)
        timing_crops = crops if timing_crops is None else timing_crops
        name = spec.partition(":")[0] + " test"
        result["auc"][name] = {n: auc_per_label(targets, score_crops(s, crops)) for n, s in runs.items()}
        result.setdefault("faces", {})[name] = int(len(crops))
        result.setdefault("data", []).append(portable_spec(spec))
    for batch in BATCHES:
        for name, fps in faces_per_second(runs, timing_crops, batch=batch, rounds=rounds).items():
            result["faces_per_second"][name][str(batch)] = round(fps, 2)
    table = markdown(result)
    click.echo(table)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps({**result, "table": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
