"""Typed results (face, image, profile) and the incremental, resumable JSONL writer."""

from __future__ import annotations

import errno
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

from face2hbe.errors import OutputError

from .decisions import BELOW_BAR, NO_FACE, NO_ITEMS, NO_PRODUCT, REASONS, rank_key, reason

__all__ = [
    "BELOW_BAR",
    "NO_FACE",
    "NO_ITEMS",
    "NO_PRODUCT",
    "REASONS",
    "FaceResult",
    "ImageResult",
    "JsonlWriter",
    "ProfileResult",
    "aggregate_profile",
    "image_result_from_record",
    "summarise_image",
]

# Error kinds that a rerun may fix (server trouble); the rest are final for that file.
RETRYABLE_ERRORS = {"inference_error", "image_timeout"}


@dataclass
class FaceResult:
    box: list[int]  # [top, right, bottom, left] in the full-resolution, upright image
    scores: dict[str, float]
    labels: list[str]  # the scores' labels that pass (decisions.passing), largest margin first
    skus: list[dict]  # ranked over every recommended label that passes (scores' and attributes')
    attributes: dict[str, float] = field(default_factory=dict)  # the attributes output's scores, when served
    attribute_labels: list[str] = field(default_factory=list)  # the attributes' labels that pass, largest margin first

    @property
    def passing_labels(self) -> list[str]:
        """Every served label that passes on this face: the scores' then the attributes'."""
        return [*self.labels, *self.attribute_labels]

    @property
    def all_scores(self) -> dict[str, float]:
        return {**self.scores, **self.attributes}


@dataclass
class ImageResult:
    path: str
    profile: str | None = None
    width: int | None = None
    height: int | None = None
    faces: list[FaceResult] = field(default_factory=list)
    top_label: str | None = None  # the recommendation's label (None exactly when there is no recommendation)
    recommendation: dict | None = None  # the best of the faces' first SKUs (decisions.rank_key)
    reason: str | None = None  # why nothing was recommended: one of decisions.REASONS (None with an error)
    error: dict | None = None  # {"kind": ..., "message": ...}
    faces_total: int | None = None  # faces detected, when more were found than scored (max faces limit)
    # {"name", "version", "thresholds", "attribute_thresholds", "production_labels"}: the model this record was judged by
    model: dict | None = None
    catalog: dict | None = None  # {"thresholds", "opt_in"}: what the catalog changed in the decisions (absent: nothing)

    def to_json(self) -> str:
        data = _plain(self)
        for key in ("faces_total", "catalog"):
            if data[key] is None:
                del data[key]
        return json.dumps(data, ensure_ascii=False)

    @property
    def shown_labels(self) -> set[str]:
        """Every served label that passes on any face."""
        return {label for face in self.faces for label in face.passing_labels}


@dataclass
class ProfileResult:
    profile: str
    images: int
    images_with_faces: int
    share: dict[str, float]  # share of images (with a face) in which each label passes
    top_label: str | None  # the recommendation's label
    recommendation: dict | None
    reason: str | None = None  # why nothing was recommended: one of decisions.REASONS


def summarise_image(
    result: ImageResult, catalog=None, production: list[str] | tuple[str, ...] | None = None
) -> ImageResult:
    """The image's pick: the best of its faces' first SKUs (decisions.rank_key), or the reason there is none.

    `production` (the model's production labels; None: every label) and `catalog` (its opt-ins) tell a label
    that no catalog product qualifies for from one that is not recommended at all.
    """
    if result.error:
        return result
    firsts = [face.skus[0] for face in result.faces if face.skus]
    if firsts:
        result.recommendation = min(firsts, key=rank_key)
        result.top_label = result.recommendation["label"]
        return result
    recommended = (
        catalog.recommended(production) if catalog is not None else (None if production is None else set(production))
    )
    result.reason = reason(bool(result.faces), result.shown_labels, recommended)
    return result


def aggregate_profile(
    profile: str,
    results: list[ImageResult],
    labels: list[str],
    catalog=None,
    production: list[str] | tuple[str, ...] | None = None,
) -> ProfileResult:
    """A folder's pick: the share of images (with a face) in which each label passes; of the labels its faces list
    products for, the one with the largest share (ties: its best product's rank), and that label's best product."""
    with_faces = [r for r in results if r.faces]
    counts = Counter(label for r in with_faces for label in r.shown_labels)
    share = {label: (counts[label] / len(with_faces) if with_faces else 0.0) for label in labels}
    best: dict[str, dict] = {}
    for sku in (sku for r in with_faces for face in r.faces for sku in face.skus):
        if sku["label"] not in best or rank_key(sku) < rank_key(best[sku["label"]]):
            best[sku["label"]] = sku
    if best:
        top = min(best, key=lambda label: (-share.get(label, 0.0), rank_key(best[label])))
        return ProfileResult(profile, len(results), len(with_faces), share, top, best[top])
    recommended = (
        catalog.recommended(production) if catalog is not None else (None if production is None else set(production))
    )
    return ProfileResult(
        profile, len(results), len(with_faces), share, None, None, reason(bool(with_faces), set(counts), recommended)
    )


def _plain(value):
    """dataclasses.asdict without its deep copies of every leaf (a record is written at once, never changed):
    asdict's deepcopy took about 1.4 ms of the client's CPU per LFW photo."""
    if is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


class JsonlWriter:
    """Append one JSON line per image, flushed as it is written, so a killed run loses nothing (the operating
    system holds every flushed line), and fsync'd at most once per `sync_s` and on close, so a machine that
    loses power loses at most that last second's records, which `--resume` redoes. (fsync per record blocked
    the client's event loop for ~1.7 ms per photo.)

    With `resume`, records already in the file are kept (and skipped by the
    caller) except those whose error a rerun may fix, which are dropped so the
    file ends with exactly one record per image.
    """

    def __init__(self, path: str | Path, resume: bool = False, sync_s: float = 1.0):
        self.path = Path(path)
        self.done: dict[str, dict] = {}
        self.sync_s, self._synced = sync_s, time.monotonic()
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
            if time.monotonic() - self._synced >= self.sync_s:
                os.fsync(self._file.fileno())
                self._synced = time.monotonic()
        except OSError as exc:
            raise OutputError(
                f"{self.path}: cannot write results ({exc.strerror or exc}); rerun with --resume once fixed"
            ) from None

    def close(self) -> None:
        if self._file.closed:  # closed already (an explicit close, then the with block's)
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError:  # disk full on the final flush: write() has already said so
            pass
        finally:
            try:
                self._file.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def image_result_from_record(record: dict) -> ImageResult:
    faces = [FaceResult(**f) for f in record.get("faces", [])]
    fields = {k: v for k, v in record.items() if k in ImageResult.__dataclass_fields__ and k != "faces"}
    return ImageResult(faces=faces, **fields)
