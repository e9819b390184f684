"""Thresholds that hold across domains: every served label's, chosen on a validation mix of CelebA and LFW.

It sits on top of the stages, like evaluate.py: training's data adapters and splits, export's config writer.

    face2hbe thresholds --celeba ../shared/data/celeba --lfw ../shared/data/lfw --write --report docs/model.md

Rule: per label, the threshold (grid 0.005..0.995, step 0.005) that maximises the MEAN of the F1 on
CelebA val and the F1 on LFW val (identities, seeded split as in training; never the test split), so
neither domain's size decides it. Targets: CelebA's human labels; LFW's labels.csv eyewear/beard/hat
(p_* at 0.5) and FaRL pseudo-labels farl_<Attribute> at 0.5. Reported per domain on the val split
(where chosen) and on the test split, with ROC AUC. Crops come from the client's detector and crop
(aligned CelebA: its measured framing) and are scored once per run with onnxruntime on the served
fp32 graph (both outputs), kept in memory.

Production labels: the labels whose ROC AUC on the CelebA test split reaches contract.PRODUCTION_AUC_BAR
(PRODUCTION_RULE) are published as `production_labels`; the others are scored and reported but recommended only
by a catalog that opts them in. `--write` writes them beside the thresholds (kept as they are with --no-test).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from face2hbe import contract
from face2hbe.graphs import score_onnx
from face2hbe.training.domains import Domain, load_domain

GRID = np.round(np.arange(0.005, 1.0, 0.005), 3)
RULE = "max of the mean of CelebA-val F1 and LFW-val F1 (grid step 0.005)"
REPORT_START, REPORT_END = "<!-- thresholds-report:start -->", "<!-- thresholds-report:end -->"
PRODUCTION_START, PRODUCTION_END = "<!-- production-labels:start -->", "<!-- production-labels:end -->"
PRODUCTION_RULE = f"ROC AUC on the CelebA test split (human labels) is at least {contract.PRODUCTION_AUC_BAR:.2f}"


def _f1_curve(targets: np.ndarray, scores: np.ndarray) -> np.ndarray | None:
    """F1 at every GRID threshold for one label (None when the domain has no positive)."""
    from face2hbe.metrics import known_binary

    known, y = known_binary(targets)
    if y.sum() == 0:
        return None
    pred = scores[known, None] >= GRID[None, :]
    tp = (pred & (y[:, None] == 1)).sum(0)
    fp = (pred & (y[:, None] == 0)).sum(0)
    fn = y.sum() - tp
    return 2 * tp / np.maximum(2 * tp + fp + fn, 1)


def choose(domains: list[Domain]) -> dict[str, float]:
    """Per served label: the GRID threshold with the best mean F1 over the domains (those with positives)."""
    out = {}
    for j, label in enumerate(contract.SERVED_LABELS):
        curves = [c for d in domains if (c := _f1_curve(d.targets[:, j], d.scores[:, j])) is not None]
        out[label] = float(GRID[int(np.argmax(np.mean(curves, axis=0)))]) if curves else contract.DEFAULT_THRESHOLD
    return out


def domain_metrics(domain: Domain, thresholds: dict[str, float]) -> dict:
    from face2hbe.metrics import per_label_metrics

    labels = list(contract.SERVED_LABELS)
    return {
        "data": domain.name,
        "split": domain.split,
        "images": domain.images,
        "faces": int(len(domain.crops)),
        "metrics": per_label_metrics(domain.targets, domain.scores, labels, thresholds),
    }


def markdown(result: dict) -> str:
    """Model-card tables: thresholds, then per label P/R/F1 per domain (val, test) and ROC AUC (test)."""
    th = result["thresholds"]
    by = {(r["data"], r["split"]): r for r in result["domains"]}
    lines = [
        f"Threshold rule: {result['rule']}. Faces: "
        + ", ".join(f"{r['data']} {r['split']} {r['faces']}" for r in result["domains"])
        + ".",
        "",
        "| label | source | threshold | CelebA val P / R / F1 | LFW val P / R / F1 | CelebA test P / R / F1 | LFW test P / R / F1 "
        "| ROC AUC CelebA test | ROC AUC LFW test |",
        "|---|---|---:|---|---|---|---|---:|---:|",
    ]

    def prf(key, label):
        m = by.get(key, {}).get("metrics", {}).get(label, {})
        if "f1" not in m or not m.get("positives"):
            return "n/a"
        return f"{m['precision']:.2f} / {m['recall']:.2f} / {m['f1']:.2f} ({m['positives']}+)"

    def auc(key, label):
        m = by.get(key, {}).get("metrics", {}).get(label, {})
        return f"{m['roc_auc']:.3f}" if "roc_auc" in m else "n/a"

    for label in contract.SERVED_LABELS:
        source = contract.ATTRIBUTE_SOURCES.get(label, "labels.csv")
        lines.append(
            f"| {label} | {source} | {th[label]:.3f} | {prf(('celeba', 'val'), label)} | {prf(('lfw', 'val'), label)} | "
            f"{prf(('celeba', 'test'), label)} | {prf(('lfw', 'test'), label)} | {auc(('celeba', 'test'), label)} | "
            f"{auc(('lfw', 'test'), label)} |"
        )
    return "\n".join(lines)


def measured_aucs(result: dict, data: str = "celeba") -> dict[str, float | None] | None:
    """Per served label, the ROC AUC measured on `data`'s test split in `result` (None: no such split measured)."""
    domain = next((r for r in result["domains"] if r["data"] == data and r["split"] == "test"), None)
    if domain is None:
        return None
    return {label: domain["metrics"].get(label, {}).get("roc_auc") for label in contract.SERVED_LABELS}


def production(result: dict) -> list[str] | None:
    """The production labels PRODUCTION_RULE gives on `result`'s CelebA test split (None: not measured)."""
    from face2hbe.export.repository import production_labels

    aucs = measured_aucs(result)
    return None if aucs is None else production_labels(aucs)


def production_markdown(result: dict) -> str:
    """The model card's production-labels table: each label's CelebA-test ROC AUC against the bar."""
    aucs, chosen = measured_aucs(result) or {}, production(result) or []
    lines = [
        f"Rule: a label is production-grade when its {PRODUCTION_RULE}; the config publishes them as "
        f"`{contract.PARAM_PRODUCTION_LABELS}`.",
        "",
        "| label | ROC AUC CelebA test | production-grade |",
        "|---|---:|---|",
    ]
    for label in contract.SERVED_LABELS:
        auc = aucs.get(label)
        lines.append(
            f"| {label} | {'n/a' if auc is None else f'{auc:.3f}'} | "
            f"{'yes' if label in chosen else 'no: scored and reported, recommended only where a catalog opts it in'} |"
        )
    return "\n".join(lines)


def write_report(result: dict, markdown_file: Path, command: str) -> None:
    """Replace the thresholds section, and the production-labels section when the test split was measured, between
    their markers in `markdown_file` (each appended if absent)."""
    from face2hbe.paths import write_marked_section

    write_marked_section(markdown_file, REPORT_START, REPORT_END, command, markdown(result))
    if measured_aucs(result) is not None:
        write_marked_section(markdown_file, PRODUCTION_START, PRODUCTION_END, command, production_markdown(result))


def run(
    celeba: str,
    lfw: str,
    repository: Path,
    cache_dir: Path | None,
    seed: int = 0,
    progress: bool = True,
    with_test: bool = True,
) -> dict:
    """Load, score (once each), choose on val, measure on val and test. Nothing is written."""
    from face2hbe.repository import validate_model_dir

    _, onnx_path = validate_model_dir(Path(repository) / contract.MODEL_NAME)
    specs = [f"celeba:{celeba}", f"lfw:{lfw}"]
    splits = ["val", "test"] if with_test else ["val"]
    domains = [load_domain(spec, split, cache_dir, seed, progress) for split in splits for spec in specs]
    for d in domains:
        d.scores = score_onnx(onnx_path, d.crops)
    thresholds = choose([d for d in domains if d.split == "val"])
    return {
        "rule": RULE,
        "seed": seed,
        "thresholds": thresholds,
        "domains": [domain_metrics(d, thresholds) for d in domains],
    }


def apply(repository: Path, thresholds: dict[str, float], production_labels: list[str] | None = None) -> list[Path]:
    """Write the thresholds (and the production labels, unless None: then each config keeps its own) into every config
    that publishes them: face2hbe's, face2hbe_int8's and the photo model's (which copies face2hbe's), each
    regenerated by code."""
    from face2hbe.export.attributes import batching_of
    from face2hbe.export.repository import rewrite_config, write_photo_config
    from face2hbe.repository import read_config

    written = []
    for name in (contract.MODEL_NAME, contract.INT8_MODEL_NAME):
        model_dir = Path(repository) / name
        if (model_dir / "config.pbtxt").is_file():
            written.append(
                rewrite_config(
                    model_dir, batching_of(read_config(model_dir)), thresholds=thresholds, production=production_labels
                )
            )
    if (Path(repository) / contract.PHOTO_MODEL_NAME / "config.pbtxt").is_file():
        written.append(write_photo_config(repository))
    return written


def save_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
