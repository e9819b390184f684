"""Readable tables for a recommend run (rich): images, profiles, summary."""

from __future__ import annotations

import json
from pathlib import Path

MAX_IMAGE_ROWS = 50  # larger runs show only the summary; the JSONL has everything
MAX_REASON_ROWS = 10  # most frequent error reasons listed under their kind


def _sku_text(sku: dict | None, currency: str) -> str:
    if not sku:
        return ""
    return f"{sku['sku']} {sku['name']} ({sku['price']:.2f} {currency})".strip()


def _passing_text(faces: list[dict]) -> str:
    """Per face (';' between faces) every label that passes with its score, or '-' for a face where none does."""
    texts = []
    for f in faces:
        scores = {**f.get("scores", {}), **(f.get("attributes") or {})}
        passing = [*f.get("labels", []), *(f.get("attribute_labels") or [])]
        texts.append(" ".join(f"{label} {scores[label]:.2f}" for label in passing) or "-")
    return "; ".join(texts)


def _outcome(record: dict, currency: str) -> str:
    """The recommendation, or the error's message, or the reason there is none."""
    return (
        _sku_text(record.get("recommendation"), currency)
        or (record.get("error") or {}).get("message")
        or record.get("reason")
        or ""
    )


def print_report(
    output: Path, summary, catalog, console=None, records: list[dict] | None = None, extra_rows=()
) -> None:
    """Images (small runs), profiles and summary tables.

    `records` are the image records when they are not a JSONL file at `output`
    (the batch job's Parquet); `extra_rows` are (what, value) pairs added to the summary.
    """
    from rich.console import Console
    from rich.table import Table

    # Not a terminal (a pipe, a log file): wide enough that no name is cut; columns fold rather than truncate.
    console = console or Console(width=None if Console().is_terminal else 200)
    currency = catalog.currency if catalog else ""
    if records is None:
        records = [json.loads(line) for line in Path(output).read_text(encoding="utf-8").splitlines() if line.strip()]
    if records and len(records) <= MAX_IMAGE_ROWS:
        table = Table(title="Images", show_lines=False)
        for column in ("image", "faces", "passing labels (score)", "top label", "recommendation or reason"):
            table.add_column(column, overflow="fold")
        for r in records:
            table.add_row(
                Path(r["path"]).name,
                str(len(r.get("faces", []))),
                _passing_text(r.get("faces", [])),
                r.get("top_label") or "-",
                _outcome(r, currency),
            )
        console.print(table)
    if summary.profiles:
        table = Table(title="Profiles (share of images with a face in which each label passes)")
        # The labels that pass somewhere, in served order: twelve columns of 0 % would hide the ones that matter.
        labels = [label for label in summary.profiles[0].share if any(p.share.get(label) for p in summary.profiles)]
        for column in ["profile", "images", "with faces", *labels, "top label", "recommendation or reason"]:
            table.add_column(column)
        for p in summary.profiles:
            table.add_row(
                p.profile,
                str(p.images),
                str(p.images_with_faces),
                *[f"{p.share[l]:.0%}" for l in labels],
                p.top_label or "-",
                _sku_text(p.recommendation, currency) or p.reason or "",
            )
        console.print(table)
    table = Table(title="Summary")
    table.add_column("what", overflow="fold")
    table.add_column("value", overflow="fold")
    table.add_row("images processed", str(summary.images))
    for suffix, n in sorted(getattr(summary, "ignored_files", {}).items()):
        table.add_row(f"files skipped in folders (not a photo: {suffix})", str(n))
    if summary.skipped:
        table.add_row("already in output (resumed)", str(summary.skipped))
    table.add_row("faces scored", str(summary.faces))
    for label, n in sorted(summary.recommendations.items()):
        table.add_row(f"images recommended: {label}", str(n))
    for reason, n in sorted(summary.reasons.items()):
        table.add_row(f"no recommendation: {reason}", str(n))
    for kind, n in sorted(summary.errors.items()):
        table.add_row(f"errors: {kind}", str(n))
    for (kind, message), n in summary.error_reasons.most_common(MAX_REASON_ROWS):
        table.add_row(f"  {kind}: {message}", str(n))
    if summary.annotated or summary.annotate_failed:
        table.add_row("annotated pictures written", str(summary.annotated))
    if summary.annotate_failed:
        table.add_row("annotated pictures failed", str(summary.annotate_failed))
    table.add_row("faces/s (end to end)", f"{summary.faces_per_second:.1f}")
    for what, value in extra_rows:
        table.add_row(what, str(value))
    table.add_row("results", str(output))
    console.print(table)


def batch_rows(summary) -> list[tuple[str, str]]:
    """The batch job's rows for the summary table (after recommend's)."""
    rows = [("rows in the output (all runs)", str(summary.output_rows))]
    for kind, n in sorted(summary.output_errors.items()):
        rows.append((f"error rows in the output: {kind}", str(n)))
    if summary.duplicates_dropped:
        rows.append(("rows reconciled (duplicates, retried errors)", str(summary.duplicates_dropped)))
    if summary.model:
        rows.append(
            ("model", f"{summary.model['model_name']} v{summary.model['model_version']} ({summary.model['engine']})")
        )
    for stage in summary.stages:
        rate = f"{stage['rows_per_s']:.1f} images/s" if stage["rows_per_s"] is not None else "-"
        per_task = (
            f" ({stage['rows_per_s_per_task']:.1f}/s per task)" if stage["rows_per_s_per_task"] is not None else ""
        )
        rows.append((f"stage {stage['stage']}", f"{rate}{per_task}, {stage['rows']} images, {stage['tasks']} tasks"))
    if summary.detection_nodes:
        nodes = sorted(summary.detection_nodes.items(), key=lambda kv: (-kv[1], kv[0]))
        rows.append(
            (
                f"images detected per node ({len(nodes)} node{'s' if len(nodes) > 1 else ''})",
                ", ".join(f"{node[:12]} {n}" for node, n in nodes),
            )
        )
    if summary.phases:
        p = {k: summary.phases.get(k, 0.0) for k in ("ray_start", "pipeline", "ray_stop", "finish")}
        rows.append(
            (
                "time",
                f"Ray start-up {p['ray_start']:.1f} s, pipeline {p['pipeline']:.1f} s, "
                f"Ray shut-down {p['ray_stop']:.1f} s, finish {p['finish']:.1f} s",
            )
        )
    return rows
