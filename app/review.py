"""`face2hbe review`: the served model's worst mistakes on a labelled folder, for a person to check.

It sits on top of the stages, like evaluate.py: training's label-folder adapter reads the folder
(eyewear/ beard/ hat/ none/) and reads the corrections back. Each photo goes through the client's
path (detect, crop, nearest face to the centre) and the served ONNX graph (onnxruntime, CPU); crops
stay in memory. Written:

- review.html: self-contained (thumbnails of the whole photos as data URIs, nothing fetched), per
  label the worst false positives (highest scores of negatives) and false negatives (lowest scores
  of positives) at the served thresholds;
- corrections.csv: those photos, one row each, with a 1/0 column per label that a person corrects.
  Saved as <folder>/corrections.csv, the label-folder adapter applies it (training/data.py).
"""

from __future__ import annotations

import base64
import csv
import html
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from face2hbe import contract

THUMBNAIL_SIDE = 160


@dataclass
class Mistake:
    index: int  # into the dataset
    label: str
    kind: str  # "false positive" | "false negative"
    score: float
    threshold: float


def worst_mistakes(
    targets: np.ndarray, scores: np.ndarray, labels: list[str], thresholds: dict[str, float], per_kind: int
) -> list[Mistake]:
    """Per label, the `per_kind` most confident false positives and false negatives (unknown targets skipped)."""
    out = []
    for j, label in enumerate(labels):
        t, s, th = targets[:, j], scores[:, j], thresholds[label]
        fp = np.flatnonzero((t == 0) & (s >= th))
        fn = np.flatnonzero((t == 1) & (s < th))
        out += [
            Mistake(int(i), label, "false positive", float(s[i]), th)
            for i in fp[np.argsort(-s[fp], kind="stable")][:per_kind]
        ]
        out += [
            Mistake(int(i), label, "false negative", float(s[i]), th)
            for i in fn[np.argsort(s[fn], kind="stable")][:per_kind]
        ]
    return out


def thumbnail_uri(path: Path, side: int = THUMBNAIL_SIDE) -> str:
    """A small JPEG of the whole photo as a data: URI (EXIF-rotated, as the client sees it)."""
    from PIL import Image

    from face2hbe.imaging import load_rgb

    image = Image.fromarray(load_rgb(path))
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _cell(value: float) -> str:
    return "" if value < 0 else str(int(value >= 0.5))


def write_review(
    dataset,
    targets: np.ndarray,
    labels: list[str],
    thresholds: dict[str, float],
    mistakes: list[Mistake],
    output: Path,
    faces_found: int,
) -> tuple[Path, Path]:
    """review.html and corrections.csv in `output` (`targets`: the dataset's, columns in `labels` order)."""
    from face2hbe.training.data import CORRECTIONS_COLUMNS

    output.mkdir(parents=True, exist_ok=True)
    rows, seen = [], set()
    for m in mistakes:
        if m.index in seen:
            continue
        seen.add(m.index)
        path = dataset.paths[m.index]
        why = "; ".join(
            f"{x.label} {x.kind} ({x.score:.3f} vs {x.threshold:.3f})" for x in mistakes if x.index == m.index
        )
        rows.append(
            {
                "file": path.name,
                "path": path.relative_to(dataset.root).as_posix(),
                "review": why,
                **{label: _cell(targets[m.index, j]) for j, label in enumerate(labels)},
            }
        )
    csv_path = output / "corrections.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[*CORRECTIONS_COLUMNS, *labels])
        writer.writeheader()
        writer.writerows(rows)

    thumbs: dict[int, str] = {}
    sections = []
    for label in labels:
        for kind in ("false positive", "false negative"):
            items = [m for m in mistakes if m.label == label and m.kind == kind]
            cards = []
            for m in items:
                path = dataset.paths[m.index]
                if m.index not in thumbs:
                    thumbs[m.index] = thumbnail_uri(path)
                cards.append(
                    f'<figure><img src="{thumbs[m.index]}" alt=""><figcaption>{html.escape(path.relative_to(dataset.root).as_posix())}'
                    f"<br>{label} {m.score:.3f} (threshold {m.threshold:.3f})</figcaption></figure>"
                )
            body = "".join(cards) or "<p>none</p>"
            sections.append(f"<h2>{html.escape(label)}: worst {kind}s ({len(items)})</h2><div class=grid>{body}</div>")
    page = (
        "<!doctype html><html><head><meta charset=utf-8><title>face2hbe review</title><style>"
        "body{font-family:sans-serif;margin:1em}.grid{display:flex;flex-wrap:wrap;gap:8px}"
        "figure{margin:0;width:170px;font-size:12px;word-break:break-all}img{max-width:160px;max-height:160px}</style></head><body>"
        f"<h1>face2hbe review: {html.escape(dataset.name)}</h1><p>{len(dataset)} photos, {faces_found} with a face; thresholds "
        + ", ".join(f"{html.escape(k)} {thresholds[k]:.3f}" for k in labels)
        + ". Correct the label columns of corrections.csv and save it as the folder's corrections.csv; "
        "the label-folder adapter then uses the corrected labels.</p>" + "".join(sections) + "</body></html>"
    )
    html_path = output / "review.html"
    html_path.write_text(page, encoding="utf-8")
    return html_path, csv_path


def review(folder: Path, output: Path, repository: Path, per_kind: int = 12) -> dict:
    """Score the folder's photos with the served model and write the review page and corrections CSV."""
    from face2hbe.graphs import score_onnx
    from face2hbe.repository import labels_and_thresholds, validate_model_dir
    from face2hbe.training.data import build_crops, load_folders

    config, onnx_path = validate_model_dir(Path(repository) / contract.MODEL_NAME)
    _, thresholds = labels_and_thresholds(config)
    dataset = load_folders(folder)
    labels = [name for name in dataset.target_names if name in thresholds]
    crops, kept = build_crops(dataset, cache_dir=None, progress=False)  # users' photos: never cached
    columns = [dataset.target_names.index(label) for label in labels]
    targets = dataset.targets[kept][:, columns]
    scores = score_onnx(onnx_path, crops)[:, [contract.SERVED_LABELS.index(label) for label in labels]]
    mistakes = worst_mistakes(targets, scores, labels, thresholds, per_kind)
    for m in mistakes:
        m.index = int(kept[m.index])  # back to the dataset's index
    html_path, csv_path = write_review(
        dataset, dataset.targets[:, columns], labels, thresholds, mistakes, output, len(kept)
    )
    return {
        "photos": len(dataset),
        "faces": int(len(kept)),
        "mistakes": len(mistakes),
        "html": html_path,
        "csv": csv_path,
    }
