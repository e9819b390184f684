"""Per-label metrics, threshold choice and ROC/PR plots: the one place ROC AUC is computed.

Core: training, export, the commands and the benchmarks all measure with it. scikit-learn, SciPy and
matplotlib load inside the functions that use them, never at import (tests/test_imports.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

THRESHOLD_RULE = "maximise F1 on the validation split"


def known_binary(y_true_column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask of known targets, their 0/1 labels): unknown targets (< 0) are left out, soft ones binarised at 0.5."""
    mask = y_true_column >= 0
    return mask, (y_true_column[mask] >= 0.5).astype(int)


def has_both_classes(binary: np.ndarray) -> bool:
    """Whether ROC AUC exists for these 0/1 labels."""
    return 0 < binary.sum() < len(binary)


def roc_auc(y_true, y_score, sample_weight=None) -> float | None:
    """ROC AUC of one label's scores; None when its known targets lack a class.

    Unknown targets (< 0) are left out and soft ones binarised at 0.5 (known_binary).
    """
    known, binary = known_binary(np.asarray(y_true))
    if not has_both_classes(binary):
        return None
    from sklearn.metrics import roc_auc_score

    weight = None if sample_weight is None else np.asarray(sample_weight)[known]
    return float(roc_auc_score(binary, np.asarray(y_score)[known], sample_weight=weight))


def roc_aucs(y_true: np.ndarray, y_score: np.ndarray, names) -> dict[str, float | None]:
    """{name: roc_auc of column j} for the columns of targets and scores, in the order of `names`."""
    return {name: roc_auc(y_true[:, j], y_score[:, j]) for j, name in enumerate(names)}


def per_label_metrics(y_true: np.ndarray, y_score: np.ndarray, names, thresholds=None) -> dict:
    """ROC AUC, PR AUC, and accuracy/F1/precision/recall at each label's threshold.

    Soft targets are binarised at 0.5; unknown targets (<0) are ignored.
    """
    from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

    out = {}
    for j, name in enumerate(names):
        mask, t = known_binary(y_true[:, j])
        s = y_score[mask, j]
        row = {"n": int(mask.sum()), "positives": int(t.sum())}
        if has_both_classes(t):
            row["roc_auc"] = roc_auc(y_true[:, j], y_score[:, j])
            row["pr_auc"] = float(average_precision_score(t, s))
        if thresholds is not None and len(t):
            th = float(thresholds[name])
            pred = (s >= th).astype(int)
            row.update(
                threshold=th,
                accuracy=float((pred == t).mean()),
                f1=float(f1_score(t, pred, zero_division=0)),
                precision=float(precision_score(t, pred, zero_division=0)),
                recall=float(recall_score(t, pred, zero_division=0)),
            )
        out[name] = row
    return out


def auc_confidence_interval(y_true, y_score, groups=None, n_boot: int = 500, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the ROC AUC.

    With `groups` (e.g. the person in each photo) whole groups are resampled: photos of one
    person are not independent draws, and resampling them one by one makes the interval too narrow.
    """
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    t = np.asarray(y_true)
    s = np.asarray(y_score)
    if groups is None:
        members = [np.array([i]) for i in range(len(t))]
    else:
        _, inverse = np.unique(np.asarray(groups), return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    aucs = []
    for _ in range(n_boot):
        i = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        if 0 < t[i].sum() < len(i):
            aucs.append(roc_auc_score(t[i], s[i]))
    lo, hi = np.percentile(aucs, [2.5, 97.5]) if aucs else (float("nan"), float("nan"))
    return float(lo), float(hi)


def paired_auc_bootstrap(y_true, score_a, score_b, groups=None, n_boot: int = 1000, seed: int = 0) -> dict:
    """ROC AUC of two scorers on the same faces, each with its 95 % bootstrap interval, and the interval of b - a.

    Both are resampled together (paired), so the difference's interval is far narrower than the two intervals
    suggest; with `groups` whole groups (a person's photos) are resampled, as in auc_confidence_interval.
    """
    rng = np.random.default_rng(seed)
    t, a, b = (np.asarray(v) for v in (y_true, score_a, score_b))
    _, inverse = np.unique(np.asarray(groups) if groups is not None else np.arange(len(t)), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    draws = []
    for _ in range(n_boot):
        i = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        if 0 < t[i].sum() < len(i):
            draws.append((rank_auc(t[i], a[i]), rank_auc(t[i], b[i])))
    draws = np.asarray(draws).reshape(-1, 2)

    def interval(x):
        return [float(v) for v in np.percentile(x, [2.5, 97.5])] if len(x) else [float("nan")] * 2

    auc_a, auc_b = rank_auc(t, a), rank_auc(t, b)
    return {
        "a": auc_a,
        "b": auc_b,
        "a_ci": interval(draws[:, 0]),
        "b_ci": interval(draws[:, 1]),
        "diff": auc_b - auc_a,
        "diff_ci": interval(draws[:, 1] - draws[:, 0]),
    }


def rank_auc(y_true, y_score) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count half, as in scikit-learn's roc_auc_score), cheap enough
    to run thousands of times in a bootstrap. Needs both classes."""
    from scipy.stats import rankdata

    positive = np.asarray(y_true) == 1
    n1, n0 = int(positive.sum()), int((~positive).sum())
    ranks = rankdata(y_score)
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def choose_thresholds(y_true: np.ndarray, y_score: np.ndarray, names, default: float = 0.5) -> dict:
    """Per-label threshold that maximises F1 on (validation) data; `default` when undefined."""
    from sklearn.metrics import precision_recall_curve

    out = {}
    for j, name in enumerate(names):
        mask, t = known_binary(y_true[:, j])
        if not has_both_classes(t):
            out[name] = default
            continue
        precision, recall, th = precision_recall_curve(t, y_score[mask, j])
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        out[name] = float(th[int(np.argmax(f1))])
    return out


def plot_curves(y_true: np.ndarray, y_score: np.ndarray, names, path: Path, title: str = "") -> Path:
    """ROC and precision-recall curves of every label, side by side, as one PNG."""
    # The object-oriented API with the Agg canvas: no pyplot, so the caller's backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    fig = Figure(figsize=(11, 5))
    FigureCanvasAgg(fig)
    ax_roc, ax_pr = fig.subplots(1, 2)
    for j, name in enumerate(names):
        mask, t = known_binary(y_true[:, j])
        if not has_both_classes(t):
            continue
        fpr, tpr, _ = roc_curve(t, y_score[mask, j])
        ax_roc.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
        precision, recall, _ = precision_recall_curve(t, y_score[mask, j])
        ax_pr.plot(recall, precision, label=name)
    ax_roc.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC {title}".strip())
    ax_pr.set(xlabel="recall", ylabel="precision", title=f"precision-recall {title}".strip())
    if ax_roc.get_legend_handles_labels()[0]:
        ax_roc.legend(loc="lower right")
        ax_pr.legend(loc="lower left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
