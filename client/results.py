"""Typed results (face, image, profile) and the incremental, resumable JSONL writer."""
from __future__ import annotations

import errno
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from face2hbe.errors import OutputError

NO_FACE = "no face detected"
NO_ITEMS = "no items detected"

# Error kinds that a rerun may fix (server trouble); the rest are final for that file.
RETRYABLE_ERRORS = {"inference_error", "image_timeout"}


@dataclass
class FaceResult:
    box: list[int]  # [top, right, bottom, left] in the full-resolution, upright image
    scores: dict[str, float]
    labels: list[str]  # labels whose score passes its threshold, best first
    skus: list[dict]  # ranked over every served label that passes (scores' and attributes')
    attributes: dict[str, float] = field(default_factory=dict)  # the attributes output's scores, when served
    attribute_labels: list[str] = field(default_factory=list)  # attribute labels that pass their threshold, best first


@dataclass
class ImageResult:
    path: str
    profile: str | None = None
    width: int | None = None
    height: int | None = None
    faces: list[FaceResult] = field(default_factory=list)
    top_label: str | None = None
    recommendation: dict | None = None  # the top SKU for the image
    reason: str | None = None  # why nothing was recommended
    error: dict | None = None  # {"kind": ..., "message": ...}
    faces_total: int | None = None  # faces detected, when more were found than scored (max faces limit)
    model: dict | None = None  # {"name", "version", "thresholds", "attribute_thresholds"}: the model this record was judged by

    def to_json(self) -> str:
        data = asdict(self)
        if data["faces_total"] is None:
            del data["faces_total"]
        return json.dumps(data, ensure_ascii=False)

    @property
    def shown_labels(self) -> set[str]:
        return {label for face in self.faces for label in face.labels}


@dataclass
class ProfileResult:
    profile: str
    images: int
    images_with_faces: int
    share: dict[str, float]  # share of images (with a face) that show each label
    top_label: str | None
    recommendation: dict | None


def summarise_image(result: ImageResult, catalog) -> ImageResult:
    """The prototype's per-image rule: the best label over all faces, or 'no items detected'."""
    if result.error:
        return result
    if not result.faces:
        result.reason = NO_FACE
        return result
    best = None
    for face in result.faces:
        for label in face.labels:
            if best is None or face.scores[label] > best[1]:
                best = (label, face.scores[label])
    if best is None:
        result.reason = NO_ITEMS
        return result
    result.top_label = best[0]
    result.recommendation = catalog.best_for(best[0], best[1])
    if result.recommendation is None:
        result.reason = f"no product for {best[0]} in the catalog"
    return result


def aggregate_profile(profile: str, results: list[ImageResult], labels: list[str], catalog) -> ProfileResult:
    """Share of images showing each item, top label and its best product (prototype's folder rule)."""
    with_faces = [r for r in results if r.faces]
    counts = Counter(label for r in with_faces for label in r.shown_labels)
    share = {label: (counts[label] / len(with_faces) if with_faces else 0.0) for label in labels}
    top = max(labels, key=lambda label: (share[label], -labels.index(label))) if counts else None
    recommendation = None
    if top:
        best_score = max(face.scores[top] for r in with_faces for face in r.faces if top in face.labels)
        recommendation = catalog.best_for(top, best_score)
    return ProfileResult(profile, len(results), len(with_faces), share, top, recommendation)


class JsonlWriter:
    """Append one JSON line per image, flushed and fsync'd so a killed run loses nothing.

    With `resume`, records already in the file are kept (and skipped by the
    caller) except those whose error a rerun may fix, which are dropped so the
    file ends with exactly one record per image.
    """

    def __init__(self, path: str | Path, resume: bool = False):
        self.path = Path(path)
        self.done: dict[str, dict] = {}
        try:
            if self.path.is_dir():
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if resume and self.path.is_file():
                self._load_and_compact()
            elif self.path.is_file():
                self.path.unlink()  # an older run's results must not look like this run's
            self._file = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot write results ({exc.strerror or exc})") from None

    def _load_and_compact(self) -> None:
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write
            error = record.get("error") or {}
            if error.get("kind") in RETRYABLE_ERRORS or record.get("path") in self.done:
                continue
            self.done[record["path"]] = record
            kept.append(json.dumps(record, ensure_ascii=False))
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def write(self, result: ImageResult) -> None:
        try:
            self._file.write(result.to_json() + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot write results ({exc.strerror or exc}); rerun with --resume once fixed") from None

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:  # disk full on the final flush: write() has already said so
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def image_result_from_record(record: dict) -> ImageResult:
    faces = [FaceResult(**f) for f in record.get("faces", [])]
    fields = {k: v for k, v in record.items() if k in ImageResult.__dataclass_fields__ and k != "faces"}
    return ImageResult(faces=faces, **fields)
