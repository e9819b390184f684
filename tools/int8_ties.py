"""INT8 ties (issue #27): distinct score values per label and ROC AUC on the CelebA test split, for the served graphs
and for the served fp32 graph quantized again with the head's last layer kept in float.

    WORK=$(mktemp -d)
    python tools/int8_ties.py --work $WORK --output docs/bench/int8-ties.json
    python -m face2hbe.loadtest.bench.graph_cost $WORK/all_int8.onnx $WORK/float_head.onnx \
        --name "all INT8 (served recipe)" --name "float head" --rounds 30 --output docs/bench/int8-ties-cost.json

Graphs compared, every one scored on the same crops (the client's detector and crop, the thresholds split):
the served fp32 graph, the served INT8 graph, and two INT8 graphs quantized here from the served fp32 graph with the
served recipe (the same calibration crops): `all_int8` (everything quantized, as served today) and `float_head`
(export/quantize.py's default since issue #27). Distinct share = distinct values of a label's score / faces.
The quantized graphs stay in --work (never in the repository); graph_cost then times them interleaved.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np


def distinct_share(scores: np.ndarray) -> list[float]:
    """Per column: distinct values / rows."""
    return [len(np.unique(scores[:, k])) / len(scores) for k in range(scores.shape[1])] if len(scores) else []


@click.command()
@click.option("--celeba", type=click.Path(path_type=Path), default=Path("../shared/data/celeba"), show_default=True)
@click.option("--repository", type=click.Path(path_type=Path), default=Path("model_repository"), show_default=True)
@click.option(
    "--work",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for the quantized graphs (outside the repository).",
)
@click.option(
    "--cache-dir", type=click.Path(path_type=Path), default=None, help="Crop cache for the CelebA test split."
)
@click.option("--output", type=click.Path(path_type=Path), default=None, help="Write the figures as JSON here.")
def main(celeba, repository, work, cache_dir, output):
    from face2hbe import contract
    from face2hbe.export.quantize import calibration_crops, quantize_int8
    from face2hbe.graphs import score_onnx
    from face2hbe.metrics import roc_aucs
    from face2hbe.paths import CACHE_DIR
    from face2hbe.training.domains import load_domain

    fp32 = repository / contract.MODEL_NAME / contract.MODEL_VERSION / "model.onnx"
    graphs = {
        "fp32": fp32,
        "served_int8": repository / contract.INT8_MODEL_NAME / contract.MODEL_VERSION / "model.onnx",
    }
    work.mkdir(parents=True, exist_ok=True)
    crops, calibration = calibration_crops(celeba, repository.parent / "client" / "samples")
    for name, float_head in (("all_int8", False), ("float_head", True)):
        graphs[name] = quantize_int8(fp32, work / f"{name}.onnx", crops, float_head=float_head)
        click.echo(f"quantized {name}", err=True)
    test = load_domain(f"celeba:{celeba}", "test", cache_dir or CACHE_DIR, progress=False)
    labels = list(contract.SERVED_LABELS)
    result = {
        "split": "CelebA test (training.domains.load_domain, seed 0)",
        "faces": int(len(test.crops)),
        "calibration": calibration,
        "graphs": {},
    }
    for name, path in graphs.items():
        scores = score_onnx(path, test.crops)
        aucs = roc_aucs(test.targets, scores, labels)
        result["graphs"][name] = {"distinct_share": dict(zip(labels, distinct_share(scores))), "roc_auc": aucs}
        click.echo(
            f"{name:12s} distinct "
            + " ".join(f"{label} {v:.0%}" for label, v in result["graphs"][name]["distinct_share"].items())
        )
        click.echo(f"{'':12s} AUC      " + " ".join(f"{label} {v:.4f}" for label, v in aucs.items() if v is not None))
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
