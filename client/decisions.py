"""The rules every result follows, for all served labels alike (docs/client.md "Decisions").

- A label **passes** when its score is at or above its threshold: the catalog's own threshold for that label
  when it sets one, else the served model's (`passes`, `passing`). Faces, images, profiles, annotated pictures
  and the batch job's rows all decide with these functions.
- A passing label is **recommended** when the model publishes it as production-grade (`production_labels`, measured
  ROC AUC at or above the bar) or the catalog opts it in (`opt_in`); otherwise it is scored and reported only.
- Products **rank** by `rank_score = priority x margin`, where margin = (score - threshold) / (1 - threshold): how
  far the face's score has gone from the label's threshold towards 1 (0 at the threshold, 1 at certainty). Ties go
  to the higher priority, then to the SKU in alphabetical order (`rank_key`).
- Why nothing is recommended: one of REASONS.
"""

from __future__ import annotations

NO_FACE = "no face detected"
NO_ITEMS = "no items detected"  # faces, and no label passes its threshold on any of them
BELOW_BAR = "only labels below the production bar pass"  # ... and the catalog opts none of them in
NO_PRODUCT = "no catalog product for the passing labels"  # a recommended label passes; no product of it qualifies
REASONS = (NO_FACE, NO_ITEMS, BELOW_BAR, NO_PRODUCT)


def passes(score: float, threshold: float) -> bool:
    """The one test of a label: its score reaches its threshold."""
    return score >= threshold


def margin(score: float, threshold: float) -> float:
    """How far `score` has gone from `threshold` towards 1: 0 at the threshold, 1 at 1.0, negative below it."""
    return (score - threshold) / (1.0 - threshold) if threshold < 1.0 else (0.0 if passes(score, threshold) else -1.0)


def passing(scores: dict[str, float], thresholds: dict[str, float]) -> list[str]:
    """The labels of `scores` that pass their threshold (a label without one never passes), largest margin first."""
    order = list(scores)
    found = [label for label in order if label in thresholds and passes(scores[label], thresholds[label])]
    return sorted(found, key=lambda label: (-margin(scores[label], thresholds[label]), order.index(label)))


def rank_key(product: dict) -> tuple:
    """Sort key of a ranked product (best first): rank score, then priority, then SKU."""
    return -product["rank_score"], -product["priority"], product["sku"]


def reason(faces: bool, passed: set[str], recommended: set[str] | None) -> str:
    """Why nothing is recommended: no face; no label passes; only labels that are not recommended pass; or a
    recommended label passes and no catalog product of it qualifies. `recommended` None: every label is."""
    if not faces:
        return NO_FACE
    if not passed:
        return NO_ITEMS
    if recommended is not None and not passed & recommended:
        return BELOW_BAR
    return NO_PRODUCT
