"""A record never contradicts itself (issue #27): the checks every test over real records runs.

Each record (recommend's JSONL object, or the batch job's rebuilt one) is re-decided from its own numbers with
client/decisions.py: its scores and the thresholds it names (the model's, replaced by the catalog's where the record
says the catalog set one), its production labels and the catalog's opt-ins.
"""

from __future__ import annotations

from face2hbe.client.decisions import BELOW_BAR, NO_FACE, NO_ITEMS, NO_PRODUCT, REASONS, passing, rank_key


def contradictions(record: dict) -> list[str]:
    """What in `record` disagrees with the rest of it (empty: nothing)."""
    if record.get("error"):
        return (
            [] if record.get("recommendation") is None and not record.get("faces") else ["an error record with results"]
        )
    found = []
    model, catalog = record["model"], record.get("catalog") or {}
    thresholds = {**model["thresholds"], **model.get("attribute_thresholds", {}), **catalog.get("thresholds", {})}
    recommended = set(model["production_labels"]) | set(catalog.get("opt_in", []))
    passed, firsts = set(), []
    for i, face in enumerate(record["faces"]):
        if face["labels"] != passing(face["scores"], thresholds):
            found.append(f"face {i}: labels {face['labels']} are not the scores' passing labels")
        if face.get("attribute_labels", []) != passing(face.get("attributes", {}), thresholds):
            found.append(
                f"face {i}: attribute_labels {face.get('attribute_labels')} are not the attributes' passing labels"
            )
        shown = set(face["labels"]) | set(face.get("attribute_labels", []))
        for sku in face["skus"]:
            if sku["label"] not in shown or sku["label"] not in recommended:
                found.append(f"face {i}: SKU {sku['sku']} for {sku['label']}, which is not a passing recommended label")
        if face["skus"] and face["skus"][0] != min(face["skus"], key=rank_key):
            found.append(f"face {i}: its first SKU is not its best")
        firsts += face["skus"][:1]
        passed |= shown
    recommendation, reason = record.get("recommendation"), record.get("reason")
    if (recommendation is None) == (reason is None):
        found.append(f"recommendation {recommendation} with reason {reason!r}: exactly one of them is expected")
    if firsts and recommendation != min(firsts, key=rank_key):
        found.append("faces list SKUs, and the recommendation is not the best of their first ones")
    if record.get("top_label") != (recommendation or {}).get("label"):
        found.append(f"top_label {record.get('top_label')!r} is not the recommendation's label")
    expected = {
        NO_FACE: not record["faces"],
        NO_ITEMS: bool(record["faces"]) and not passed,
        BELOW_BAR: bool(passed) and not passed & recommended,
        NO_PRODUCT: bool(passed & recommended) and not firsts,
    }
    if reason is not None and (reason not in REASONS or not expected[reason]):
        found.append(
            f"reason {reason!r} does not hold (passing labels {sorted(passed)}, recommended {sorted(recommended)})"
        )
    return found
