"""Photos -> faces -> scores -> SKUs: the client's public API.

    from face2hbe.client import Recommender
    with Recommender("127.0.0.1:8001") as rec:
        result = rec.recommend("photo.jpg")          # ImageResult
        summary = rec.run(["photos/"], "out.jsonl")  # a whole batch, resumable

Detection runs in worker processes while inference requests are in flight, so
the detector and the server stay busy at the same time.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from face2hbe.errors import BadImageError, CatalogError, Face2hbeError, InferenceError, ServerUnavailableError
from face2hbe.imaging import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS, Box, crop_face, load_rgb

from .catalog import Catalog, load_catalog
from .detect import DetectorSettings, detect_faces
from .inference import AsyncScorer, ClientSettings
from .results import FaceResult, ImageResult, JsonlWriter, ProfileResult, aggregate_profile, image_result_from_record, summarise_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Limits:
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_faces: int = 20  # per image; the largest faces are kept


@dataclass
class Prepared:
    """What detection hands to inference for one image (crops stay in memory only)."""

    path: str
    width: int = 0
    height: int = 0
    boxes: list[Box] = field(default_factory=list)
    crops: np.ndarray | None = None
    faces_total: int = 0
    error: dict | None = None


@dataclass
class RunSummary:
    images: int = 0
    skipped: int = 0  # already in the output (resume)
    faces: int = 0
    recommendations: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    profiles: list[ProfileResult] = field(default_factory=list)
    not_processed: int = 0  # left for a rerun after a server outage
    outage: str | None = None

    @property
    def faces_per_second(self) -> float:
        return self.faces / self.seconds if self.seconds else 0.0


def find_inputs(paths) -> list[tuple[Path, str | None]]:
    """(image path, profile) pairs: a file stands alone, a folder is one profile (searched recursively).

    Symlinked folders are not followed, so a directory loop cannot recurse forever.
    """
    items = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path, followlinks=False):
                dirs.sort()
                for name in sorted(files):
                    if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                        items.append((Path(root) / name, str(path)))
        else:
            items.append((path, None))  # missing or odd files get an error record, not a crash
    return items


def prepare_image(path: str, detector: DetectorSettings, limits: Limits) -> Prepared:
    """Load, detect and crop one image; errors become part of the result."""
    try:
        image = load_rgb(path, max_pixels=limits.max_pixels, max_file_bytes=limits.max_file_bytes)
    except BadImageError as exc:
        return Prepared(path, error={"kind": "bad_image", "message": exc.reason})
    height, width = image.shape[:2]
    try:
        boxes = detect_faces(image, detector)
    except Exception as exc:  # dlib raises RuntimeError for images it cannot process
        return Prepared(path, width, height, error={"kind": "detection_failed", "message": str(exc)})
    kept = boxes[: limits.max_faces]
    crops = np.stack([crop_face(image, b) for b in kept]) if kept else None
    return Prepared(path, width, height, kept, crops, faces_total=len(boxes))


def _warm_worker() -> None:
    import face_recognition  # noqa: F401  (loads dlib's models once per worker)


class Recommender:
    """Recommend products for the faces in photos, using a face2hbe Triton server."""

    def __init__(
        self,
        url: str | None = None,
        protocol: str = "grpc",
        catalog: Catalog | str | Path | None = None,
        detector: DetectorSettings = DetectorSettings(),
        limits: Limits = Limits(),
        skus_per_face: int = 3,
        workers: int | None = None,
        client: ClientSettings | None = None,
    ):
        self.client_settings = client or ClientSettings(url=url, protocol=protocol)
        self._catalog_source = catalog
        self.catalog: Catalog | None = catalog if isinstance(catalog, Catalog) else None
        self.detector = detector
        self.limits = limits
        self.skus_per_face = skus_per_face
        self.workers = workers or max(1, (os.cpu_count() or 2))
        self._loop = None
        self._scorer: AsyncScorer | None = None

    # --- single images (synchronous API) ------------------------------------------

    def __enter__(self) -> "Recommender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._loop is not None:
            if self._scorer is not None:
                self._loop.run_until_complete(self._scorer.close())
            self._loop.close()
            self._loop, self._scorer = None, None

    def recommend(self, image: str | Path | np.ndarray, name: str = "<array>") -> ImageResult:
        """Faces, scores and SKUs for one image (a path or an RGB uint8 array)."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._scorer = self._loop.run_until_complete(self._connect())
        if isinstance(image, np.ndarray):
            prepared = self._prepare_array(image, name)
        else:
            prepared = prepare_image(str(image), self.detector, self.limits)
        return self._loop.run_until_complete(self._score(prepared, None))

    def _prepare_array(self, image: np.ndarray, name: str) -> Prepared:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise BadImageError(name, f"expected an RGB uint8 array [H,W,3], got {image.dtype} {list(image.shape)}")
        boxes = detect_faces(image, self.detector)
        kept = boxes[: self.limits.max_faces]
        crops = np.stack([crop_face(image, b) for b in kept]) if kept else None
        return Prepared(name, image.shape[1], image.shape[0], kept, crops, len(boxes))

    async def _connect(self) -> AsyncScorer:
        scorer = AsyncScorer(self.client_settings)
        info = await scorer.connect()
        if self.catalog is None:
            self.catalog = load_catalog(self._catalog_source, labels=info.labels)
        unknown = {p.label for p in self.catalog.products} - set(info.labels)
        if unknown:
            raise CatalogError(f"catalog labels {sorted(unknown)} are not served by the model (labels {info.labels})")
        return scorer

    async def _score(self, prepared: Prepared, profile: str | None, scorer: AsyncScorer | None = None) -> ImageResult:
        scorer = scorer or self._scorer
        result = ImageResult(path=prepared.path, profile=profile, width=prepared.width or None, height=prepared.height or None)
        if prepared.error:
            result.error = prepared.error
            return result
        if prepared.faces_total > len(prepared.boxes):
            result.faces_total = prepared.faces_total
        if prepared.crops is not None:
            scores = await scorer.score(prepared.crops)
            labels, thresholds = scorer.info.labels, scorer.info.thresholds
            for box, row in zip(prepared.boxes, scores):
                label_scores = {label: round(float(s), 6) for label, s in zip(labels, row)}
                passed = sorted((l for l in labels if label_scores[l] >= thresholds[l]), key=lambda l: -label_scores[l])
                skus = self.catalog.rank(label_scores, thresholds, self.skus_per_face)
                result.faces.append(FaceResult(box.as_list(), label_scores, passed, skus))
        return summarise_image(result, self.catalog)

    # --- batches ------------------------------------------------------------------

    def run(self, paths, output: str | Path, resume: bool = False, progress: bool = True, on_result=None) -> RunSummary:
        """Process every image under `paths`, writing one JSONL record per image as it finishes."""
        return asyncio.run(self._run(find_inputs(paths), Path(output), resume, progress, on_result))

    async def _run(self, items, output: Path, resume: bool, progress: bool, on_result) -> RunSummary:
        from tqdm import tqdm

        summary = RunSummary()
        started = time.perf_counter()
        by_profile: dict[str, list[ImageResult]] = defaultdict(list)
        scorer = await self._connect()
        try:
            with JsonlWriter(output, resume=resume) as writer:
                todo = []
                for path, profile in items:
                    record = writer.done.get(str(path))
                    if record is not None:
                        summary.skipped += 1
                        if profile:
                            by_profile[profile].append(image_result_from_record(record))
                    else:
                        todo.append((path, profile))
                bar = tqdm(total=len(todo), unit="img", disable=not progress, desc="recommend")
                loop = asyncio.get_running_loop()
                with ProcessPoolExecutor(self.workers, initializer=_warm_worker) as pool:
                    window = self.workers * 2 + scorer.settings.max_in_flight
                    pending: set[asyncio.Task] = set()
                    queue = iter(todo)
                    stop = False

                    async def handle(path: Path, profile: str | None):
                        prepared = await loop.run_in_executor(pool, prepare_image, str(path), self.detector, self.limits)
                        try:
                            return profile, await self._score(prepared, profile, scorer)
                        except InferenceError as exc:  # the server rejected this request; the run goes on
                            error = {"kind": "inference_error", "message": str(exc)}
                            return profile, ImageResult(str(path), profile, prepared.width, prepared.height, error=error)

                    while True:
                        while not stop and len(pending) < window:
                            nxt = next(queue, None)
                            if nxt is None:
                                break
                            pending.add(asyncio.ensure_future(handle(*nxt)))
                        if not pending:
                            break
                        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                        for task in done:
                            try:
                                profile, result = task.result()
                            except ServerUnavailableError as exc:
                                summary.outage = str(exc)
                                stop = True  # no new work; in-flight images finish or fail too
                                continue
                            writer.write(result)
                            self._count(summary, result)
                            if profile:
                                by_profile[profile].append(result)
                            if on_result:
                                on_result(result)
                            bar.update(1)
                            bar.set_postfix(faces_per_s=f"{summary.faces / max(time.perf_counter() - started, 1e-9):.1f}")
                bar.close()
                summary.not_processed = len(todo) - summary.images
        finally:
            await scorer.close()
        summary.seconds = time.perf_counter() - started
        labels = scorer.info.labels
        summary.profiles = [aggregate_profile(p, r, labels, self.catalog) for p, r in by_profile.items()]
        return summary

    @staticmethod
    def _count(summary: RunSummary, result: ImageResult) -> None:
        summary.images += 1
        summary.faces += len(result.faces)
        if result.error:
            summary.errors[result.error["kind"]] += 1
            log.error("%s: %s", result.path, result.error["message"])
        elif result.top_label:
            summary.recommendations[result.top_label] += 1
        if result.reason:
            summary.reasons[result.reason] += 1
