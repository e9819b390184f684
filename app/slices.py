"""Where the model fails: recall at the served thresholds and ROC AUC per slice of the test splits.

It sits on top of the stages, like evaluate.py and thresholds.py (training's data adapters, the
served graph through onnxruntime).

    face2hbe slices --report docs/model.md --output docs/eval/slices.json

Slices come from each domain's own attributes: CelebA's human labels, LFW's FaRL probabilities at
0.5 (pseudo-labels). For each of eyewear, beard and hat: the positives' recall at the served
threshold and ROC AUC inside a slice and in the rest of the domain, so a gap such as "grey-haired
bearded men" shows as a number. Crops and scores as in `face2hbe thresholds` (test splits only).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from face2hbe import contract
from face2hbe.metrics import known_binary, roc_auc

# (name, rule over the domain's attribute columns): the slices, each with its complement as "rest".
SLICES = (
    ("gray_hair", lambda a: a["Gray_Hair"]),
    ("mustache_no_goatee", lambda a: a["Mustache"] & ~a["Goatee"]),
    ("male", lambda a: a["Male"]),
    ("female", lambda a: ~a["Male"]),
    ("young", lambda a: a["Young"]),
    ("not_young", lambda a: ~a["Young"]),
    ("pale_skin", lambda a: a["Pale_Skin"]),
)
REPORT_START, REPORT_END = "<!-- slices-report:start -->", "<!-- slices-report:end -->"


def _recall_auc(y: np.ndarray, s: np.ndarray, threshold: float) -> dict:
    positives = int(y.sum())
    out = {"positives": positives, "faces": int(len(y))}
    out["recall"] = round(float((s[y == 1] >= threshold).mean()), 3) if positives else None
    auc = roc_auc(y, s)
    out["roc_auc"] = None if auc is None else round(auc, 3)
    return out


def slice_metrics(
    labels: np.ndarray, scores: np.ndarray, attributes: dict[str, np.ndarray], thresholds: dict[str, float]
) -> dict:
    """{slice: {label: {"in": metrics, "rest": metrics}}} for the SLICES this domain can form."""
    result = {}
    for name, rule in SLICES:
        try:
            member = rule(attributes)
        except KeyError:
            continue  # the domain lacks one of the attributes
        result[name] = {}
        for j, label in enumerate(contract.LABELS):
            known, y = known_binary(labels[:, j])
            s, m = scores[known, j], member[known]
            result[name][label] = {
                "in": _recall_auc(y[m], s[m], thresholds[label]),
                "rest": _recall_auc(y[~m], s[~m], thresholds[label]),
            }
    return result


def run(celeba: str, lfw: str, repository: Path, cache_dir: Path | None, progress: bool = True) -> dict:
    from face2hbe.graphs import score_onnx
    from face2hbe.paths import portable_spec
    from face2hbe.repository import ONNX_FILE, labels_and_thresholds, read_config
    from face2hbe.training.domains import load_domain

    model_dir = Path(repository) / contract.MODEL_NAME
    _, thresholds = labels_and_thresholds(read_config(model_dir))
    out = {"thresholds": {k: thresholds[k] for k in contract.LABELS}, "domains": {}}
    for spec in (f"celeba:{celeba}", f"lfw:{lfw}"):
        domain = load_domain(spec, "test", cache_dir, progress=progress)
        scores = score_onnx(model_dir / contract.MODEL_VERSION / ONNX_FILE, domain.crops)[:, : len(contract.LABELS)]
        labels = domain.targets[:, : len(contract.LABELS)]
        out["domains"][domain.name] = {
            "data": portable_spec(spec),
            "faces": int(len(domain.crops)),
            "slices": slice_metrics(labels, scores, domain.attributes, thresholds),
        }
    return out


def markdown(result: dict) -> str:
    def cell(m):
        if m["positives"] == 0:
            return "n/a (0+)"
        auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.3f}"
        return f"{m['recall']:.2f} / {auc} ({m['positives']}+)"

    lines = [
        "Recall at the served threshold / ROC AUC (positives), in the slice and in the rest of the domain's test split:",
        "",
    ]
    head = "| domain | slice | " + " | ".join(f"{label} in | {label} rest" for label in contract.LABELS) + " |"
    lines += [head, "|---|---|" + "---|---|" * len(contract.LABELS)]
    for domain, d in result["domains"].items():
        for name, per_label in d["slices"].items():
            cells = [f"{cell(per_label[label]['in'])} | {cell(per_label[label]['rest'])}" for label in contract.LABELS]
            lines.append(f"| {domain} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(result: dict, markdown_file: Path, command: str) -> None:
    """Replace the slices section between the report markers in `markdown_file` (append if absent)."""
    from face2hbe.paths import write_marked_section

    write_marked_section(markdown_file, REPORT_START, REPORT_END, command, markdown(result))


def save_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
