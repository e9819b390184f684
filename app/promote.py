"""One step from a training run to what is served, behind a gate: `face2hbe promote RUN`.

It sits on top of the stages, like thresholds.py: export writes the graphs, training's data adapters give the
splits, and every graph is scored with onnxruntime on the client's crops (the default detector, the shared crop).

    face2hbe promote runs/cpu128               # stage, gate, and promote when the gate passes
    face2hbe promote runs/cpu128 --dry-run     # stage and gate only: the repository and the docs stay as they are

1. Stage, in a folder beside the repository: RUN's fp32 graph (as `face2hbe export RUN`), the INT8 graph quantized
   from that very file (its metadata records the fp32 file's sha256, which reading the repository checks), and
   the photo model's config.
2. Thresholds for every served label, chosen on the validation splits by the cross-domain rule of thresholds.py,
   and the production labels (thresholds.PRODUCTION_RULE, on the CelebA test split), written into every config
   that publishes them (fp32, INT8, photo).
3. Gate (GATE_RULE): the served model and the candidate on the same test splits in one run, both as the CPU default
   serves them (INT8): per-label ROC AUC with 95 % bootstrap intervals (LFW and celeba_more resample whole people),
   the paired interval of the difference, F1 at each model's own thresholds, and the slices of slices.py.
4. Promote (the gate passed, or --force): the staged folders replace the repository's, and the model card's tables
   (docs/model.md), the INT8 table (docs/serving.md) and their JSON (docs/eval) are written from this run.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from face2hbe import contract

log = logging.getLogger(__name__)

GATE_LABELS = contract.LABELS
GATE_RULE = (
    "on every test split, for each of eyewear, beard and hat, the paired 95 % bootstrap interval of "
    "AUC(candidate) - AUC(served) does not lie wholly below 0 (not worse beyond noise); the mean AUC of the three is "
    "higher; and the served model's weakest of the three on that split is higher (both INT8, as served on CPUs)"
)
GATE_START, GATE_END = "<!-- promotion-gate:start -->", "<!-- promotion-gate:end -->"
PROMOTED = (contract.MODEL_NAME, contract.INT8_MODEL_NAME, contract.PHOTO_MODEL_NAME)


@dataclass
class PromoteSettings:
    run_dir: Path
    repository: Path
    celeba: Path
    lfw: Path
    more: list[Path] = field(default_factory=list)  # further CelebA folders with identities, gated on their test split
    cache_dir: Path | None = None
    docs: Path | None = Path("docs")  # where the model card, serving.md and eval/ live; None: write no docs
    force: bool = False
    dry_run: bool = False
    seed: int = 0
    n_boot: int = 1000
    progress: bool = True


def _domains(settings: PromoteSettings, split: str, with_more: bool):
    from face2hbe.training.domains import load_domain

    folders = [("celeba", settings.celeba), ("lfw", settings.lfw)]
    folders += [("celeba", path) for path in settings.more] if with_more else []
    domains = []
    for kind, folder in folders:
        domain = load_domain(f"{kind}:{folder}", split, settings.cache_dir, settings.seed, settings.progress)
        domain.name = Path(folder).name if kind == "celeba" else "lfw"
        domains.append(domain)
    return domains


def compare(
    served: dict,
    candidate: dict,
    candidate_fp32: dict,
    test,
    served_thresholds: dict,
    thresholds: dict,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """The gate's table and verdict: per test domain and served label, served vs candidate (scores by domain name)."""
    from face2hbe.metrics import known_binary, paired_auc_bootstrap, per_label_metrics

    labels = list(contract.SERVED_LABELS)
    rows, reasons = {}, []
    for domain in test:
        a, b = served[domain.name], candidate[domain.name]
        f1_a = per_label_metrics(domain.targets, a, labels, served_thresholds)
        f1_b = per_label_metrics(domain.targets, b, labels, thresholds)
        fp32 = per_label_metrics(domain.targets, candidate_fp32[domain.name], labels)
        rows[domain.name] = {"faces": int(len(domain.crops)), "labels": {}}
        for j, label in enumerate(labels):
            known, y = known_binary(domain.targets[:, j])
            row = {
                "positives": int(y.sum()),
                "f1_served": f1_a[label].get("f1"),
                "f1_candidate": f1_b[label].get("f1"),
                "auc_candidate_fp32": fp32[label].get("roc_auc"),
            }
            if 0 < y.sum() < len(y):
                row |= paired_auc_bootstrap(y, a[known, j], b[known, j], domain.groups[known], n_boot, seed)
            rows[domain.name]["labels"][label] = row
        gated = {label: r for label, r in rows[domain.name]["labels"].items() if label in GATE_LABELS and "diff" in r}
        for label, r in gated.items():
            if r["diff_ci"][1] < 0:
                reasons.append(
                    f"{label} on {domain.name}: worse beyond noise (AUC {r['a']:.4f} -> {r['b']:.4f}, "
                    f"difference interval [{r['diff_ci'][0]:+.4f}, {r['diff_ci'][1]:+.4f}])"
                )
        if gated:
            mean_a, mean_b = (float(np.mean([r[k] for r in gated.values()])) for k in ("a", "b"))
            rows[domain.name]["mean_auc"] = {"served": mean_a, "candidate": mean_b}
            if mean_b <= mean_a:
                reasons.append(
                    f"{domain.name}: mean AUC of {', '.join(gated)} not higher ({mean_a:.4f} -> {mean_b:.4f})"
                )
            weakest = min(gated, key=lambda label: gated[label]["a"])
            rows[domain.name]["weakest"] = weakest
            if gated[weakest]["b"] <= gated[weakest]["a"]:
                reasons.append(
                    f"{weakest} on {domain.name} (the served model's weakest): not higher "
                    f"({gated[weakest]['a']:.4f} -> {gated[weakest]['b']:.4f})"
                )
    return {"rule": GATE_RULE, "passed": not reasons, "reasons": reasons, "domains": rows}


def markdown(gate: dict) -> str:
    """The model card's gate table: every test split and served label, served -> candidate."""

    def auc(r, key):
        return f"{r[key]:.4f} [{r[key + '_ci'][0]:.3f}, {r[key + '_ci'][1]:.3f}]" if key in r else "n/a"

    def f1(value):
        return "n/a" if value is None else f"{value:.2f}"

    lines = [
        f"Gate: {gate['rule']}.",
        "",
        f"Verdict: **{'passed' if gate['passed'] else 'refused'}**"
        + ("" if gate["passed"] else ": " + "; ".join(gate["reasons"])),
        "",
        "ROC AUC [95 % interval] of the INT8 graphs, the paired difference, F1 at each model's thresholds, "
        "and the candidate's fp32 AUC:",
        "",
        "| test split | label | positives | served AUC | candidate AUC | difference [95 %] | F1 served -> candidate | candidate fp32 AUC |",
        "|---|---|---:|---|---|---|---|---:|",
    ]
    for name, domain in gate["domains"].items():
        for label, r in domain["labels"].items():
            diff = f"{r['diff']:+.4f} [{r['diff_ci'][0]:+.4f}, {r['diff_ci'][1]:+.4f}]" if "diff" in r else "n/a"
            fp32 = "n/a" if r["auc_candidate_fp32"] is None else f"{r['auc_candidate_fp32']:.4f}"
            lines.append(
                f"| {name} ({domain['faces']} faces) | {label} | {r['positives']} | {auc(r, 'a')} | {auc(r, 'b')} | "
                f"{diff} | {f1(r['f1_served'])} -> {f1(r['f1_candidate'])} | {fp32} |"
            )
    return "\n".join(lines)


def _stage(settings: PromoteSettings, stage: Path):
    """RUN's fp32 graph, its INT8 graph and the photo config in `stage`; returns the INT8 report (or None)."""
    import importlib.util

    from face2hbe.export.attributes import batching_of
    from face2hbe.export.build import export_repository
    from face2hbe.export.quantize import export_int8
    from face2hbe.repository import read_config

    repository = Path(settings.repository)
    if (repository / contract.PHOTO_MODEL_NAME).is_dir():
        shutil.copytree(repository / contract.PHOTO_MODEL_NAME, stage / contract.PHOTO_MODEL_NAME)
    batching = batching_of(read_config(repository / contract.MODEL_NAME))
    export_repository(settings.run_dir, stage, batching)
    samples = Path(importlib.util.find_spec("face2hbe.client").origin).parent / "samples"
    _, report = export_int8(stage, settings.celeba, samples, batching)
    return report


def promote(settings: PromoteSettings) -> dict:
    """Stage, choose thresholds, gate, and (gate passed or `force`, not `dry_run`) promote; returns the result."""
    from face2hbe.graphs import score_onnx
    from face2hbe.repository import ONNX_FILE, file_sha256, labels_and_thresholds, validate_model_dir

    from .thresholds import RULE, apply, choose, domain_metrics, production

    repository = Path(settings.repository)
    served_config, served_int8 = validate_model_dir(repository / contract.INT8_MODEL_NAME)
    served_thresholds = labels_and_thresholds(served_config)[1]
    stage = Path(tempfile.mkdtemp(prefix=".promote-", dir=repository.parent))
    try:
        int8_report = _stage(settings, stage)
        fp32, int8 = (
            stage / name / contract.MODEL_VERSION / ONNX_FILE
            for name in (contract.MODEL_NAME, contract.INT8_MODEL_NAME)
        )
        val = _domains(settings, "val", with_more=False)
        test = _domains(settings, "test", with_more=True)
        for domain in val:
            domain.scores = score_onnx(fp32, domain.crops)
        thresholds = choose(val)
        scores = {
            key: {d.name: score_onnx(path, d.crops) for d in test}
            for key, path in (("served", served_int8), ("candidate", int8), ("candidate_fp32", fp32))
        }
        for domain in test:
            domain.scores = scores["candidate_fp32"][domain.name]
        gate = compare(
            scores["served"],
            scores["candidate"],
            scores["candidate_fp32"],
            test,
            served_thresholds,
            thresholds,
            settings.n_boot,
            settings.seed,
        )
        result = {
            "run": str(Path(settings.run_dir).name),
            "gate": gate,
            "thresholds": thresholds,
            "sha256": {
                name: file_sha256(path)
                for name, path in ((contract.MODEL_NAME, fp32), (contract.INT8_MODEL_NAME, int8))
            },
            "threshold_report": {
                "rule": RULE,
                "seed": settings.seed,
                "thresholds": thresholds,
                "domains": [domain_metrics(d, thresholds) for d in val + test if d.name in ("celeba", "lfw")],
            },
            "promoted": False,
        }
        result["production_labels"] = production(result["threshold_report"])
        apply(stage, thresholds, result["production_labels"])
        result["slices"] = _slices(test, thresholds)
        write_record(result, Path(settings.run_dir))
        if settings.dry_run or not (gate["passed"] or settings.force):
            return result
        _replace(stage, repository)
        result["promoted"] = True
        if settings.docs is not None:
            _write_docs(settings, result, int8_report)
        return result
    finally:
        shutil.rmtree(stage, ignore_errors=True)


RECORD_FILE = "promotion-gate"  # .json and .md in the run folder, whatever the verdict


def write_record(result: dict, run_dir: Path) -> None:
    """The gate's verdict and tables beside the run (promotion-gate.json, .md), refused or passed, so a refused
    candidate's measurements outlive the terminal (the docs are only rewritten on promotion)."""
    keep = ("run", "gate", "thresholds", "production_labels", "sha256", "slices")
    (run_dir / f"{RECORD_FILE}.json").write_text(json.dumps({k: result[k] for k in keep}, indent=1) + "\n")
    (run_dir / f"{RECORD_FILE}.md").write_text(markdown(result["gate"]) + "\n")


def _slices(test, thresholds: dict) -> dict:
    from .slices import slice_metrics

    k = len(contract.LABELS)
    return {
        "thresholds": {label: thresholds[label] for label in contract.LABELS},
        "domains": {
            d.name: {
                "faces": int(len(d.crops)),
                "slices": slice_metrics(d.targets[:, :k], d.scores[:, :k], d.attributes, thresholds),
            }
            for d in test
        },
    }


def _replace(stage: Path, repository: Path) -> None:
    """The staged model folders take the place of the repository's (each a rename on the same file system)."""
    for name in PROMOTED:
        if not (stage / name).is_dir():
            continue
        target = repository / name
        if target.exists():
            target.rename(stage / f"replaced-{name}")
        (stage / name).rename(target)


def _write_docs(settings: PromoteSettings, result: dict, int8_report) -> None:
    from face2hbe.export.quantize import write_report as write_int8_report
    from face2hbe.paths import portable, write_marked_section

    from . import slices, thresholds

    docs = Path(settings.docs)
    (docs / "eval").mkdir(parents=True, exist_ok=True)
    command = f"face2hbe promote {portable(settings.run_dir)}"
    write_marked_section(docs / "model.md", GATE_START, GATE_END, command, markdown(result["gate"]))
    thresholds.write_report(result["threshold_report"], docs / "model.md", command)
    slices.write_report(result["slices"], docs / "model.md", command)
    if int8_report is not None:
        write_int8_report(int8_report, docs / "serving.md", command)
    eval_dir = docs / "eval"
    for name, data in (
        ("promotion-gate", {k: result[k] for k in ("run", "gate", "thresholds", "production_labels", "sha256")}),
        ("thresholds", result["threshold_report"]),
        ("slices", result["slices"]),
    ):
        (eval_dir / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
