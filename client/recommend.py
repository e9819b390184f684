"""Photos -> faces -> scores -> SKUs: the client's public API.

    from face2hbe.client import Recommender
    with Recommender("127.0.0.1:8001") as rec:
        result = rec.recommend("photo.jpg")          # ImageResult
        summary = rec.run(["photos/"], "out.jsonl")  # a whole batch, resumable
        rec.run(["photos/"], "out.jsonl", annotate="annotated/")  # + pictures with boxes

Inside a running event loop (Jupyter, FastAPI), await the same calls instead:

    async with Recommender("127.0.0.1:8001") as rec:
        result = await rec.arecommend("photo.jpg")
        summary = await rec.arun(["photos/"], "out.jsonl")

Detection runs in threads of the caller's process (one detector per thread) while
inference requests are in flight, so the detector and the server stay busy at the same
time. No process is started: a script without a main guard, `python - < script.py`,
`python -c`, a notebook and a web app's worker thread all work, and nothing outlives
the caller.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from face2hbe.detection import DEFAULT_MAX_FACES, DetectorSettings, decode_for_detection, detect_and_crop, load_detector
from face2hbe.errors import BadImageError, CatalogError, InferenceError, ServerUnavailableError
from face2hbe.imaging import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    Box,
    DecodedPhoto,
    photo_size,
    read_image_file,
)

from .catalog import Catalog, load_catalog
from .decisions import passing
from .hold import ahold
from .inference import AsyncScorer, ClientSettings, ModelInfo
from .results import (
    FaceResult,
    ImageResult,
    JsonlWriter,
    ProfileResult,
    aggregate_profile,
    image_result_from_record,
    summarise_image,
)

log = logging.getLogger(__name__)

# Where faces are found: "local" (this process's detection workers; the crops are sent to the face model)
# or "server" (the photo bytes go to the photo model, which detects, crops and scores on the server).
DETECT_MODES = ("local", "server")


@dataclass(frozen=True)
class Limits:
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_faces: int = DEFAULT_MAX_FACES  # per image; the largest faces are kept
    image_timeout_s: float = 60.0  # reading, decoding and detecting one image; past it the image gets an error record


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
    photo: bytes | None = None  # --detect server: the encoded photo, sent as it is (memory only)


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
    ignored_files: Counter = field(default_factory=Counter)  # files in folders that are not photos, by suffix

    def add(self, result: ImageResult) -> None:
        """Count one image's record: its faces, its error or its pick, its reason (the caller logs errors)."""
        self.images += 1
        self.faces += len(result.faces)
        if result.error:
            self.errors[result.error["kind"]] += 1
            self.error_reasons[(result.error["kind"], result.error.get("message", ""))] += 1
        elif result.recommendation:  # a top label with no product counts under its reason instead
            self.recommendations[result.top_label] += 1
        if result.reason:
            self.reasons[result.reason] += 1

    @property
    def inference_errors(self) -> int:
        return self.errors["inference_error"]

    @property
    def faces_per_second(self) -> float:
        return self.faces / self.seconds if self.seconds else 0.0


def find_inputs(paths, ignored: Counter | None = None) -> list[tuple[Path, str | None]]:
    """(image path, profile) pairs: a file stands alone, a folder is one profile (searched recursively).

    Symlinked folders are not followed, so a directory loop cannot recurse forever. Files in
    folders whose suffix is not a photo's are counted in `ignored` (by suffix), never dropped silently.
    """
    items = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path, followlinks=False):
                dirs.sort()
                for name in sorted(files):
                    suffix = Path(name).suffix.lower()
                    if suffix in IMAGE_SUFFIXES:
                        items.append((Path(root) / name, str(path)))
                    elif ignored is not None:
                        ignored[suffix or "(no suffix)"] += 1
        else:
            items.append((path, None))  # missing or odd files get an error record, not a crash
    return items


def prepare_array(image: np.ndarray | DecodedPhoto, name: str, detector: DetectorSettings, limits: Limits) -> Prepared:
    """Detect and crop the faces of one decoded RGB image; detector failures become part of the result."""
    height, width = image.shape[:2]  # a DecodedPhoto's shape is its full-resolution one
    try:
        kept, crops, total = detect_and_crop(image, detector, limits.max_faces)
    except RuntimeError as exc:  # dlib's error for images it cannot process
        return Prepared(name, width, height, error={"kind": "detection_failed", "message": str(exc)})
    return Prepared(name, width, height, kept, crops if len(kept) else None, faces_total=total)


def prepare_image(path: str, detector: DetectorSettings, limits: Limits, data: bytes | None = None) -> Prepared:
    """Load, detect and crop one image file; errors become part of the result.

    With `data`, the image's bytes already read (from any filesystem) are decoded
    instead of reading `path`, which then only names the image (the batch job).
    """
    try:
        data = read_image_file(path, limits.max_file_bytes) if data is None else data
        image = decode_for_detection(
            data, path, detector, limits.max_pixels, limits.max_file_bytes
        )  # one decode, reduced
    except BadImageError as exc:
        return Prepared(path, error={"kind": "bad_image", "message": exc.reason})
    return prepare_array(image, path, detector, limits)


def read_photo(path: str, limits: Limits) -> Prepared:
    """`--detect server`: read one photo's bytes and its upright size from the header; errors become part of the result."""
    try:
        data = read_image_file(path, limits.max_file_bytes)
        width, height = photo_size(data, path, limits.max_pixels, limits.max_file_bytes)
    except BadImageError as exc:
        return Prepared(path, error={"kind": "bad_image", "message": exc.reason})
    return Prepared(path, width, height, photo=data)


def default_workers() -> int:
    """Detection threads by default: the CPUs this process may run on (its affinity mask, so `taskset` counts), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def detection_pool(workers: int) -> ThreadPoolExecutor:
    """Detection threads, each with its own detector (detection.load_detector keeps one per thread).

    Threads, not worker processes (issue #28): LiteRT's interpreter, dlib and Pillow's decode and
    resize release the GIL, so threads cost no more CPU per photo than processes did and start
    sooner (docs/benchmarks.md, "End to end vs model-only; detection threads vs processes"), and
    nothing re-imports the caller's main module (spawned workers did: a script without a main
    guard crashed, a script on stdin could not start them).
    Threads also end with the caller, however it ends, and crops never leave the process.
    """
    return ThreadPoolExecutor(workers, thread_name_prefix="detect")


def _warm_up(model: str) -> None:
    """A detection thread's first job: its detector, loaded while the client connects (nothing comes back)."""
    load_detector(model)


def _outside_event_loop(method: str) -> None:
    """Refuse a synchronous call inside a running event loop (a notebook, FastAPI): it would block that loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(f"Recommender.{method}() cannot run inside a running event loop: await Recommender.a{method}()")


def score_image(
    prepared: Prepared,
    profile: str | None,
    scores: np.ndarray | None,
    info: ModelInfo,
    catalog: Catalog,
    skus_per_face: int,
) -> ImageResult:
    """One image's record from its detections and their scores: per-face labels and SKUs, the image's pick."""
    score_labels, attribute_labels = info.score_labels, list(info.attribute_labels)
    model = {
        "name": info.name,
        "version": info.version,
        "thresholds": {label: info.thresholds[label] for label in score_labels},
    }
    if attribute_labels:
        model["attribute_thresholds"] = {label: info.thresholds[label] for label in attribute_labels}
    model["production_labels"] = list(info.labels if info.production_labels is None else info.production_labels)
    result = ImageResult(
        path=prepared.path,
        profile=profile,
        width=prepared.width or None,
        height=prepared.height or None,
        model=model,
        catalog=catalog.rules() or None,
    )
    if prepared.error:
        result.error = prepared.error
        return result
    if prepared.faces_total > len(prepared.boxes):
        result.faces_total = prepared.faces_total
    thresholds = catalog.effective_thresholds(info.thresholds)  # what a label passes by (decisions.py)
    if scores is not None:
        for box, row in zip(prepared.boxes, scores):
            every = {label: round(float(s), 6) for label, s in zip(info.labels, row)}
            label_scores = {label: every[label] for label in score_labels}
            attributes = {label: every[label] for label in attribute_labels}
            skus = catalog.rank(every, info.thresholds, skus_per_face, info.production_labels)
            result.faces.append(
                FaceResult(
                    box.as_list(),
                    label_scores,
                    passing(label_scores, thresholds),
                    skus,
                    attributes,
                    passing(attributes, thresholds),
                )
            )
    return summarise_image(result, catalog, info.production_labels)


class Recommender:
    """Recommend products for the faces in photos, using a face2hbe Triton server."""

    def __init__(
        self,
        url: str | None = None,
        protocol: str = "grpc",
        catalog: Catalog | str | Path | None = None,
        detector: DetectorSettings | None = None,
        limits: Limits | None = None,
        skus_per_face: int = 3,
        workers: int | None = None,
        client: ClientSettings | None = None,
        detect: str = DETECT_MODES[0],
    ):
        if client is not None and (url is not None or protocol != "grpc"):
            raise ValueError("give the server either as url/protocol or as client=ClientSettings(...), not both")
        if detect not in DETECT_MODES:
            raise ValueError(f"detect must be one of {', '.join(DETECT_MODES)}, not {detect!r}")
        if skus_per_face < 1:
            raise ValueError(
                f"skus_per_face must be at least 1 (the image's pick is its faces' first product), not {skus_per_face}"
            )
        self.detect = detect
        self.client_settings = client or ClientSettings(url=url, protocol=protocol)
        self._catalog_source = catalog
        self.catalog: Catalog | None = catalog if isinstance(catalog, Catalog) else None
        self.detector = detector or DetectorSettings()
        self.limits = limits or Limits()
        self.skus_per_face = skus_per_face
        self.workers = workers or default_workers()  # detection threads (docs/client.md, "Throughput")
        self._loop = None
        self._scorer: AsyncScorer | None = None

    @property
    def model_info(self):
        """Labels, thresholds and max batch size read from the server (None before the first image)."""
        return self._scorer.info if self._scorer is not None else None

    # --- single images ----------------------------------------------------------------

    def __enter__(self) -> "Recommender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    async def __aenter__(self) -> "Recommender":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    def close(self) -> None:
        """Close the synchronous API's connection and event loop."""
        if self._loop is not None:
            if self._scorer is not None:
                self._loop.run_until_complete(self._scorer.close())
            self._loop.close()
            self._loop, self._scorer = None, None

    async def aclose(self) -> None:
        """Close the async API's connection."""
        if self._scorer is not None and self._loop is None:
            await self._scorer.close()
            self._scorer = None

    def recommend(self, image: str | Path | np.ndarray, name: str = "<array>") -> ImageResult:
        """Faces, scores and SKUs for one image (a path or an RGB uint8 array).

        Runs its own event loop: inside a running loop (Jupyter, FastAPI) use `arecommend`.
        """
        _outside_event_loop("recommend")
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(self.arecommend(image, name))

    async def arecommend(self, image: str | Path | np.ndarray, name: str = "<array>") -> ImageResult:
        """Faces, scores and SKUs for one image, awaitable (detection runs in a thread)."""
        if self._scorer is None:
            self._scorer = await self._connect()
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise BadImageError(name, f"expected an RGB uint8 array [H,W,3], got {image.dtype} {list(image.shape)}")
            if self.detect == "server":
                prepared = await asyncio.to_thread(_encoded, image, name)
            else:
                prepared = await asyncio.to_thread(prepare_array, image, name, self.detector, self.limits)
        elif self.detect == "server":
            prepared = await asyncio.to_thread(read_photo, str(image), self.limits)
        else:
            prepared = await asyncio.to_thread(prepare_image, str(image), self.detector, self.limits)
        return await self._score(prepared, None, self._scorer)

    async def _connect(self) -> AsyncScorer:
        scorer = AsyncScorer(self.client_settings)
        try:
            info = await scorer.connect()
            if self.catalog is None:
                self.catalog = load_catalog(self._catalog_source, labels=info.labels)
            unknown = {p.label for p in self.catalog.products} - set(info.labels)
            if unknown:
                raise CatalogError(
                    f"catalog labels {sorted(unknown)} are not served by the model (labels {info.labels})"
                )
        except BaseException:
            await scorer.close()
            raise
        return scorer

    async def _score(self, prepared: Prepared, profile: str | None, scorer: AsyncScorer) -> ImageResult:
        if prepared.photo is not None and not prepared.error:
            return await self._score_photo(prepared, profile, scorer)
        scores = await scorer.score(prepared.crops) if prepared.crops is not None and not prepared.error else None
        return score_image(prepared, profile, scores, scorer.info, self.catalog, self.skus_per_face)

    async def _score_photo(self, prepared: Prepared, profile: str | None, scorer: AsyncScorer) -> ImageResult:
        """--detect server: the photo model finds, crops and scores the faces; the record is the local path's."""
        try:
            boxes, scores, _ = await scorer.score_photo(prepared.photo, prepared.path)
        except BadImageError as exc:
            failed = Prepared(
                prepared.path, prepared.width, prepared.height, error={"kind": "bad_image", "message": exc.reason}
            )
            return score_image(failed, profile, None, scorer.info, self.catalog, self.skus_per_face)
        kept = [
            Box(top=int(t), right=int(r), bottom=int(b), left=int(left))
            for t, r, b, left in boxes[: self.limits.max_faces]
        ]
        found = Prepared(prepared.path, prepared.width, prepared.height, kept, faces_total=len(boxes))
        return score_image(
            found, profile, scores[: len(kept)] if kept else None, scorer.info, self.catalog, self.skus_per_face
        )

    # --- batches ------------------------------------------------------------------

    def run(
        self,
        paths,
        output: str | Path,
        resume: bool = False,
        progress: bool = True,
        on_result=None,
        annotate: str | Path | None = None,
    ) -> RunSummary:
        """Process every image under `paths`, writing one JSONL record per image as it finishes.

        With `annotate`, an annotated JPEG copy of each photo goes to that folder
        (see face2hbe.client.annotate) before its record is written, so a resumed
        run never skips a photo whose picture is missing. Inside a running event
        loop, await `arun` with the same arguments.
        """
        _outside_event_loop("run")
        return asyncio.run(self.arun(paths, output, resume, progress, on_result, annotate))

    async def arun(
        self,
        paths,
        output: str | Path,
        resume: bool = False,
        progress: bool = True,
        on_result=None,
        annotate: str | Path | None = None,
    ) -> RunSummary:
        """`run`, awaitable."""
        summary = RunSummary()
        items = find_inputs(paths, summary.ignored_files)
        return await self._run(items, Path(output), resume, progress, on_result, annotate, summary)

    def _pictures(self, annotate, summary: RunSummary):
        """An async `picture(result, profile)` that writes annotated copies in a thread (no-op without a folder)."""
        from .annotate import annotate as annotate_image
        from .annotate import remove_stale_temporaries

        pool = ThreadPoolExecutor(1, thread_name_prefix="annotate") if annotate else None
        if annotate and Path(annotate).is_dir():
            remove_stale_temporaries(annotate)  # pictures cut by a killed run

        async def picture(result: ImageResult, profile: str | None) -> None:
            if pool is None:
                return
            currency = self.catalog.currency if self.catalog else ""
            try:
                written = await asyncio.get_running_loop().run_in_executor(
                    pool,
                    annotate_image,
                    result,
                    annotate,
                    profile,
                    currency,
                    self.limits.max_pixels,
                    self.limits.max_file_bytes,
                )
            except Exception as exc:  # a picture is a by-product: its failure must not lose the record
                log.warning("%s: annotated copy not written (%s)", result.path, exc)
                summary.annotate_failed += 1
                return
            summary.annotated += written is not None

        return picture, pool

    async def _run(
        self, items, output: Path, resume: bool, progress: bool, on_result, annotate, summary: RunSummary
    ) -> RunSummary:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        # The output first: a results file this run cannot write fails the run before any work, and
        # an older one is gone (or, with resume, compacted) before anything can go wrong.
        local = self.detect == "local"
        with (
            JsonlWriter(output, resume=resume) as writer,
            (
                detection_pool(self.workers) if local else ThreadPoolExecutor(self.workers, thread_name_prefix="read")
            ) as pool,
        ):
            # The threads load their detectors while we connect (a failure shows where `warm` is awaited, if at all).
            warm = asyncio.gather(
                *(loop.run_in_executor(pool, _warm_up, self.detector.model) for _ in range(self.workers * local))
            )
            warm.add_done_callback(lambda done: done.cancelled() or done.exception())
            scorer = await self._connect()
            picture, draw_pool = self._pictures(annotate, summary)
            try:
                await warm
                await self._batch(items, writer, annotate, progress, on_result, summary, started, pool, scorer, picture)
            finally:
                await scorer.close()
                if draw_pool is not None:
                    draw_pool.shutdown(wait=True)
        summary.seconds = time.perf_counter() - started
        return summary

    async def _prepare(self, pool, path: Path) -> Prepared:
        """prepare_image in a worker, with a deadline: an image that hangs gets an error record, the run goes on."""
        loop = asyncio.get_running_loop()
        try:
            work = (
                (prepare_image, str(path), self.detector, self.limits)
                if self.detect == "local"
                else (read_photo, str(path), self.limits)
            )
            return await asyncio.wait_for(loop.run_in_executor(pool, *work), self.limits.image_timeout_s)
        except asyncio.TimeoutError:
            return Prepared(
                str(path),
                error={
                    "kind": "image_timeout",
                    "message": f"not read and detected within {self.limits.image_timeout_s:g} s",
                },
            )

    async def _batch(
        self, items, writer: JsonlWriter, annotate, progress, on_result, summary, started, pool, scorer, picture
    ) -> None:
        from tqdm import tqdm

        from .annotate import annotated_path

        by_profile: dict[str, list[ImageResult]] = defaultdict(list)
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
            prepared = await self._prepare(pool, path)
            try:
                result = await self._score(prepared, profile, scorer)
            except InferenceError as exc:  # the server rejected this request; the run goes on
                error = {"kind": "inference_error", "message": str(exc)}
                result = score_image(
                    Prepared(str(path), prepared.width, prepared.height, error=error),
                    profile,
                    None,
                    scorer.info,
                    self.catalog,
                    self.skus_per_face,
                )
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
                summary.add(result)
                if result.error:  # repr: a newline in a name cannot forge a log line
                    log.error("%r: %s", result.path, result.error["message"])
                if profile:
                    by_profile[profile].append(result)
                if on_result:
                    on_result(result)
                await ahold("record")  # the test hook (client/hold.py): inert unless a test asked
                bar.update(1)
                bar.set_postfix(faces_per_s=f"{summary.faces / max(time.perf_counter() - started, 1e-9):.1f}")
        bar.close()
        summary.not_processed = len(todo) - summary.images
        summary.profiles = [
            aggregate_profile(p, r, scorer.info.labels, self.catalog, scorer.info.production_labels)
            for p, r in by_profile.items()
        ]


def _encoded(image: np.ndarray, name: str) -> Prepared:
    """--detect server with an in-memory array: sent as PNG (lossless, so the server sees these very pixels)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return Prepared(name, image.shape[1], image.shape[0], photo=buffer.getvalue())
