"""Photos -> faces -> scores -> SKUs: the client's public API.

    from face2hbe.client import Recommender
    with Recommender("127.0.0.1:8001") as rec:
        result = rec.recommend("photo.jpg")          # ImageResult
        summary = rec.run(["photos/"], "out.jsonl")  # a whole batch, resumable
        rec.run(["photos/"], "out.jsonl", annotate="annotated/")  # + pictures with boxes

Detection runs in worker processes while inference requests are in flight, so
the detector and the server stay busy at the same time.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from face2hbe.errors import BadImageError, CatalogError, Face2hbeError, InferenceError, ServerUnavailableError
from face2hbe.imaging import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS, Box, crop_face, decode_rgb, load_rgb

from .catalog import Catalog, load_catalog
from .detect import DetectorSettings, detect_faces, load_detector
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
    error_reasons: Counter = field(default_factory=Counter)  # (kind, message) -> images
    seconds: float = 0.0
    profiles: list[ProfileResult] = field(default_factory=list)
    not_processed: int = 0  # left for a rerun after a server outage
    outage: str | None = None
    annotated: int = 0  # annotated pictures written (--annotate)
    annotate_failed: int = 0

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


def prepare_image(path: str, detector: DetectorSettings, limits: Limits, data: bytes | None = None) -> Prepared:
    """Load, detect and crop one image; errors become part of the result.

    With `data`, the image's bytes already read (from any filesystem) are decoded
    instead of reading `path`, which then only names the image (the batch job).
    """
    try:
        if data is None:
            image = load_rgb(path, max_pixels=limits.max_pixels, max_file_bytes=limits.max_file_bytes)
        else:
            image = decode_rgb(data, path, max_pixels=limits.max_pixels, max_file_bytes=limits.max_file_bytes)
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


def image_result(prepared: Prepared, profile: str | None, scores, labels: list[str], thresholds: dict[str, float],
                 catalog: Catalog, skus_per_face: int = 3) -> ImageResult:
    """One image's result from its detection and its faces' scores [faces, labels] (None: no faces or an error).

    The per-face labels and SKUs and the per-image rule, shared by `recommend` and the batch job.
    """
    result = ImageResult(path=prepared.path, profile=profile, width=prepared.width or None, height=prepared.height or None)
    if prepared.error:
        result.error = prepared.error
        return result
    if prepared.faces_total > len(prepared.boxes):
        result.faces_total = prepared.faces_total
    if scores is not None:
        for box, row in zip(prepared.boxes, scores):
            label_scores = {label: round(float(s), 6) for label, s in zip(labels, row)}
            passed = sorted((l for l in labels if label_scores[l] >= thresholds[l]), key=lambda l: -label_scores[l])
            skus = catalog.rank(label_scores, thresholds, skus_per_face)
            result.faces.append(FaceResult(box.as_list(), label_scores, passed, skus))
    return summarise_image(result, catalog)


def _warm_worker(model: str = "hog") -> None:
    load_detector(model)  # once per worker, while the parent connects to the server


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
        # One core left to the event loop and a local server: on 2 cores one detection worker
        # gives more end-to-end faces/s than two (docs/client.md).
        self.workers = workers or max(1, (os.cpu_count() or 2) - 1)
        self._loop = None
        self._scorer: AsyncScorer | None = None

    @property
    def model_info(self):
        """Labels, thresholds and max batch size read from the server (None before the first image)."""
        return self._scorer.info if self._scorer is not None else None

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
        scores = None
        if not prepared.error and prepared.crops is not None:
            scores = await scorer.score(prepared.crops)
        return image_result(prepared, profile, scores, scorer.info.labels, scorer.info.thresholds, self.catalog, self.skus_per_face)

    # --- batches ------------------------------------------------------------------

    def run(self, paths, output: str | Path, resume: bool = False, progress: bool = True, on_result=None,
            annotate: str | Path | None = None) -> RunSummary:
        """Process every image under `paths`, writing one JSONL record per image as it finishes.

        With `annotate`, an annotated JPEG copy of each photo goes to that folder
        (see face2hbe.client.annotate) before its record is written, so a resumed
        run never skips a photo whose picture is missing.
        """
        return asyncio.run(self._run(find_inputs(paths), Path(output), resume, progress, on_result, annotate))

    def _pictures(self, annotate, summary: RunSummary):
        """An async `picture(result, profile)` that writes annotated copies in a thread (no-op without a folder)."""
        from .annotate import annotate as annotate_image, remove_stale_temporaries

        pool = ThreadPoolExecutor(1, thread_name_prefix="annotate") if annotate else None
        if annotate and Path(annotate).is_dir():
            remove_stale_temporaries(annotate)  # pictures cut by a killed run

        async def picture(result: ImageResult, profile: str | None) -> None:
            if pool is None:
                return
            currency = self.catalog.currency if self.catalog else ""
            try:
                written = await asyncio.get_running_loop().run_in_executor(
                    pool, annotate_image, result, annotate, profile, currency, self.limits.max_pixels, self.limits.max_file_bytes
                )
            except Exception as exc:  # a picture is a by-product: its failure must not lose the record
                log.warning("%s: annotated copy not written (%s)", result.path, exc)
                summary.annotate_failed += 1
                return
            summary.annotated += written is not None

        return picture, pool

    async def _run(self, items, output: Path, resume: bool, progress: bool, on_result, annotate=None) -> RunSummary:
        summary = RunSummary()
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        # Workers start (and load the detector) before gRPC opens its threads: with the
        # fork start method all workers fork at the first submit, and forking a process
        # with live gRPC threads is unsafe. Their start-up overlaps the connection.
        with ProcessPoolExecutor(self.workers, initializer=_warm_worker, initargs=(self.detector.model,)) as pool:
            warm = loop.run_in_executor(pool, int)
            scorer = await self._connect()
            picture, draw_pool = self._pictures(annotate, summary)
            try:
                await warm
                await self._batch(items, output, resume, progress, on_result, annotate, summary, started, pool, scorer, picture)
            finally:
                await scorer.close()
                if draw_pool is not None:
                    draw_pool.shutdown(wait=True)
        summary.seconds = time.perf_counter() - started
        return summary

    async def _batch(self, items, output, resume, progress, on_result, annotate, summary, started, pool, scorer, picture) -> None:
        from tqdm import tqdm

        from .annotate import annotated_path

        loop = asyncio.get_running_loop()
        by_profile: dict[str, list[ImageResult]] = defaultdict(list)
        with JsonlWriter(output, resume=resume) as writer:
            todo, redraw = [], []
            for path, profile in items:
                record = writer.done.get(str(path))
                if record is None:
                    todo.append((path, profile))
                    continue
                summary.skipped += 1
                previous = image_result_from_record(record)
                if profile:
                    by_profile[profile].append(previous)
                if annotate and not annotated_path(annotate, path, profile).exists():
                    redraw.append(picture(previous, profile))  # resumed into a new --annotate folder
            await asyncio.gather(*redraw)

            async def handle(path: Path, profile: str | None):
                prepared = await loop.run_in_executor(pool, prepare_image, str(path), self.detector, self.limits)
                try:
                    result = await self._score(prepared, profile, scorer)
                except InferenceError as exc:  # the server rejected this request; the run goes on
                    error = {"kind": "inference_error", "message": str(exc)}
                    result = ImageResult(str(path), profile, prepared.width, prepared.height, error=error)
                await picture(result, profile)  # before the record: a resumed run skips only finished images
                return profile, result

            bar = tqdm(total=len(todo), unit="img", disable=not progress, desc="recommend")
            # Enough images under way to keep every detection worker and the in-flight bound busy.
            window = self.workers * 2 + scorer.settings.max_in_flight
            pending: set[asyncio.Future] = set()
            queue = iter(todo)
            stop = False
            while True:
                while not stop and len(pending) < window:
                    nxt = next(queue, None)
                    if nxt is None:
                        break
                    pending.add(asyncio.ensure_future(handle(*nxt)))
                if not pending:
                    break
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
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
        labels = scorer.info.labels
        summary.profiles = [aggregate_profile(p, r, labels, self.catalog) for p, r in by_profile.items()]

    @staticmethod
    def _count(summary: RunSummary, result: ImageResult) -> None:
        summary.images += 1
        summary.faces += len(result.faces)
        if result.error:
            summary.errors[result.error["kind"]] += 1
            summary.error_reasons[(result.error["kind"], result.error.get("message", ""))] += 1
            log.error("%s: %s", result.path, result.error["message"])
        elif result.recommendation:  # a top label with no product counts under its reason instead
            summary.recommendations[result.top_label] += 1
        if result.reason:
            summary.reasons[result.reason] += 1
