"""The batch job on Ray Data: millions of photos -> faces -> scores -> SKUs -> Parquet.

    face2hbe batch photos/ more.txt manifest.parquet --output out/batch [--engine local] [--address ray://...]

Stages (Ray Data operators; the first two fuse into one CPU task):

1. read bytes (local paths, or any filesystem pyarrow understands), sha256 of the
   content; images already in the output (same path and content hash) are skipped;
2. decode + EXIF + detect + crop: `recommend`'s own `prepare_image`, on CPU tasks;
3. score: a bounded pool of actors, each calling Triton over gRPC (AsyncScorer,
   labels and thresholds from the served config) or, with `engine="local"`, an
   onnxruntime session on the repository's model.onnx; then the per-image result
   (`recommend.image_result`, the same function `recommend` uses);
4. write: each block becomes one Parquet part file, written to a temporary name and
   moved (renamed) to a name made of a hash of the image keys it holds.

Face crops travel between stages 2 and 3 in Ray's object store, in memory only;
they are never written, logged or returned. A local Ray started here has object
spilling turned off so they never reach the disk.

Exactly once: a rerun reads the parts already written, drops duplicate keys
(a retried write after a kill) and retryable errors (server trouble, unreadable
files), and skips every key left. Ray retries killed tasks and restarts killed
actors (and retries their tasks). The run ends with the same reconciliation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from face2hbe import contract
from face2hbe.detection import DetectorSettings
from face2hbe.errors import BadImageError, Face2hbeError, InferenceError, InputError, ServerUnavailableError
from face2hbe.imaging import Box, read_image_file

from .inference import ClientSettings, ModelInfo
from .ray_runtime import configure_progress, init_ray, quiet_stderr
from .recommend import Limits, Prepared, Recommender, RunSummary, find_inputs, prepare_image, score_image
from .results import RETRYABLE_ERRORS, ImageResult, aggregate_profile, image_result_from_record

log = logging.getLogger(__name__)

RESULTS_DIR = "results"
PROFILES_FILE = "profiles.parquet"
PART_PREFIX = "part-"
MANIFEST_SUFFIXES = {".parquet", ".csv"}
LIST_SUFFIXES = {".txt", ".lst"}
# Errors a rerun retries: server trouble and files that could not be read; the rest are final for that content.
BATCH_RETRYABLE = RETRYABLE_ERRORS | {"read_error", "server_unavailable"}
MAX_LOGGED_ERRORS = 1000
ENGINES = ("triton", "local")


@dataclass(frozen=True)
class BatchSettings:
    output: str | Path = "out/batch"  # a local folder or a pyarrow filesystem URI (s3://bucket/prefix)
    engine: str = "triton"  # "triton": gRPC to a Triton server; "local": onnxruntime inside the scoring actors
    client: ClientSettings = ClientSettings()  # Triton address, timeouts, retries, in-flight requests per actor
    repository: Path = Path("model_repository")  # engine "local": <repository>/<model>/config.pbtxt and 1/model.onnx
    catalog: str | Path | None = None
    detector: DetectorSettings = DetectorSettings()
    limits: Limits = Limits()
    skus_per_face: int = 3
    cpu_workers: int | None = None  # detection tasks at once (None: as many as Ray has CPUs)
    scorers: int = 1  # scoring actors (per Triton replica, see docs/batch.md)
    images_per_task: int = 32  # images per detection task / scoring call (one full Triton batch of faces, about)
    rows_per_part: int = 1000  # images per Parquet part file (at most)
    jsonl: Path | None = None  # also write every output row as JSONL (recommend's records)
    address: str | None = None  # Ray cluster; None: RAY_ADDRESS or a local Ray
    num_cpus: int | None = None  # local Ray's CPUs (None: the CPUs this process may use)
    object_store_bytes: int | None = 2 * 1024**3  # local Ray's object store (None: Ray's default, 30 % of the memory)
    progress: bool = True
    # Test hook (hidden CLI options): after this many images a worker of `pause_stage` ("score":
    # a scoring actor, "prepare": a detection task's process) writes its pid to `<pause_file>.pid`
    # and waits for `pause_file` to appear (once: the .pid file stays).
    pause_after: int | None = None
    pause_file: Path | None = None
    pause_stage: str = "score"

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, not {self.engine!r}")


@dataclass
class BatchSummary(RunSummary):
    """recommend's RunSummary plus what the batch job adds."""

    output_rows: int = 0  # rows in the output after this run (earlier runs included)
    output_errors: Counter = field(default_factory=Counter)  # error rows in the output, by kind
    duplicates_dropped: int = 0  # rows reconciled away: duplicates, and retryable errors redone by this run
    stages: list[dict] = field(default_factory=list)  # per-stage throughput from Ray Data's stats
    stats_text: str = ""
    model: dict = field(default_factory=dict)
    phases: dict = field(default_factory=dict)  # seconds: ray_start, pipeline, ray_stop, finish
    detection_nodes: Counter = field(default_factory=Counter)  # images this run detected, by Ray node ID


# --- inputs ----------------------------------------------------------------------------


def _is_uri(path: str) -> bool:
    return "://" in path


def read_path_list(path: str) -> list[tuple[str, str | None]]:
    """(path, None) for every non-blank, non-# line of a text file of paths."""
    try:
        text = _read_any(path).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the list of paths ({exc})") from None
    return [(line.strip(), None) for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def split_inputs(paths) -> tuple[list[tuple[str, str | None]], list[str]]:
    """(image, profile) items from folders, image files and text lists, and the manifests (Parquet/CSV) apart."""
    items, manifests = [], []
    for raw in paths:
        text = str(raw)
        suffix = Path(text.split("?", 1)[0]).suffix.lower()
        if suffix in MANIFEST_SUFFIXES:
            manifests.append(text)
        elif suffix in LIST_SUFFIXES:
            items.extend(read_path_list(text))
        elif _is_uri(text):
            items.append((text, None))  # one file on a remote filesystem (folders there: use a manifest)
        else:
            items.extend((str(p), profile) for p, profile in find_inputs([raw]))
    return items, manifests


def _read_any(path: str) -> bytes:
    if _is_uri(path):
        import pyarrow.fs

        fs, inner = pyarrow.fs.FileSystem.from_uri(path)
        with fs.open_input_stream(inner) as f:
            return f.read()
    return Path(path).read_bytes()


def read_image_bytes(path: str, max_file_bytes: int) -> bytes:
    """An image file's bytes from a local path or a pyarrow filesystem URI; BadImageError / OSError otherwise."""
    if _is_uri(path):
        import pyarrow.fs

        fs, inner = pyarrow.fs.FileSystem.from_uri(path)
        info = fs.get_file_info(inner)
        if info.type == pyarrow.fs.FileType.NotFound:
            raise BadImageError(path, "cannot read file (No such file or directory)")
        if info.type != pyarrow.fs.FileType.File:
            raise BadImageError(path, "not a regular file")
        if info.size is not None and info.size > max_file_bytes:
            raise BadImageError(path, f"file is {info.size} bytes, above the {max_file_bytes}-byte limit")
        with fs.open_input_stream(inner) as f:
            return f.read()
    return read_image_file(path, max_file_bytes)  # recommend's own reader: non-blocking, a regular file or an error


# --- stages (module-level functions: Ray pickles them by reference) ----------------------

_DONE_CACHE: dict = {}


def _done_keys(ref) -> set:
    """The (path, sha256) keys already in the output, fetched once per worker process."""
    import ray

    key = ref.hex() if hasattr(ref, "hex") else id(ref)
    if key not in _DONE_CACHE:
        _DONE_CACHE.clear()
        _DONE_CACHE[key] = ray.get(ref)
    return _DONE_CACHE[key]


def _column(batch, name, n, default=None):
    values = batch.get(name)
    return list(values) if values is not None else [default] * n


def _text(value) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return str(value)


def read_stage(batch: dict, done_ref, max_file_bytes: int) -> dict:
    """path, profile -> + sha256, data (bytes), skip, error_kind, error_message."""
    paths = [str(p) for p in batch["path"]]
    # "" for no profile between stages: a column mixing None and strings may come back as NaN or "nan".
    profiles = [_text(p) or "" for p in _column(batch, "profile", len(paths))]
    done = _done_keys(done_ref)
    out = {
        "path": paths,
        "profile": profiles,
        "sha256": [],
        "data": [],
        "skip": [],
        "error_kind": [],
        "error_message": [],
    }
    for path in paths:
        data, digest, kind, message = b"", "", "", ""
        try:
            data = read_image_bytes(path, max_file_bytes)
            digest = hashlib.sha256(data).hexdigest()
        except BadImageError as exc:
            kind, message = "bad_image", exc.reason
        except OSError as exc:  # permissions, network filesystems: a rerun may succeed
            kind, message = "read_error", f"cannot read file ({exc.strerror or exc})"
        skip = (path, digest) in done
        out["sha256"].append(digest)
        out["data"].append(b"" if skip else data)
        out["skip"].append(skip)
        out["error_kind"].append(kind)
        out["error_message"].append(message)
    return out


def prepare_stage(batch: dict, detector: DetectorSettings, limits: Limits, pause: tuple | None = None) -> dict:
    """Decode, EXIF, detect, crop (recommend's prepare_image on the bytes); crops leave as raw uint8 bytes.

    `node`: the Ray node that detected the image ("" when it was skipped or unreadable), counted per node in the summary.
    """
    import ray

    n = len(batch["path"])
    node = ray.get_runtime_context().get_node_id()
    out = {k: list(batch[k]) for k in ("path", "profile", "sha256", "skip", "error_kind", "error_message")}
    out.update({"width": [], "height": [], "faces_total": [], "boxes": [], "crops": [], "node": []})
    for i in range(n):
        prepared = None
        if not out["skip"][i] and not out["error_kind"][i]:
            prepared = prepare_image(out["path"][i], detector, limits, data=bytes(batch["data"][i]))
            if prepared.error:
                out["error_kind"][i], out["error_message"][i] = prepared.error["kind"], prepared.error["message"]
        out["width"].append(prepared.width if prepared else 0)
        out["height"].append(prepared.height if prepared else 0)
        out["faces_total"].append(prepared.faces_total if prepared else 0)
        out["boxes"].append(json.dumps([b.as_list() for b in prepared.boxes]) if prepared else "[]")
        crops = prepared.crops if prepared is not None and prepared.crops is not None else None
        out["crops"].append(crops.tobytes() if crops is not None else b"")
        out["node"].append(node if prepared is not None else "")
    if pause:
        _maybe_pause(n, *pause)
    return out


_PAUSE = {"images": 0}
_PAUSE_LOCK = threading.Lock()


def _maybe_pause(n: int, after: int | None, pause_file: Path | None) -> None:
    """Test hook: after `after` images in this process, once per run, stop until `pause_file` exists (or a kill)."""
    if not after or not pause_file:
        return
    with _PAUSE_LOCK:
        _PAUSE["images"] += n
        if _PAUSE["images"] < after:
            return
    marker = Path(f"{pause_file}.pid")
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    deadline = time.monotonic() + 300  # hang guard only
    while not Path(pause_file).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


class _Loop:
    """An asyncio loop in a thread, so concurrent actor calls share one AsyncScorer."""

    def __init__(self):
        import asyncio

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="triton-client", daemon=True)
        self.thread.start()

    def run(self, coro):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


class ScoreStage:
    """Scoring actor: Triton over gRPC (or onnxruntime in-process), then recommend's per-image result."""

    def __init__(self, settings: BatchSettings):
        from .catalog import load_catalog

        self.settings = settings
        self.engine = settings.engine
        if self.engine == "triton":
            from .inference import AsyncScorer

            self._loop = _Loop()
            self._scorer = AsyncScorer(settings.client)
            self.info = self._loop.run(self._scorer.connect())
        else:
            self._session, self.info = _local_session(settings)
        self.labels, self.thresholds, self.max_batch = self.info.labels, self.info.thresholds, self.info.max_batch_size
        self.model = {
            "model_name": self.info.name,
            "model_version": self.info.version,
            "engine": self.engine,
            "thresholds": json.dumps({label: self.thresholds[label] for label in self.info.score_labels}),
            "attribute_thresholds": json.dumps({label: self.thresholds[label] for label in self.info.attribute_labels}),
            "production_labels": json.dumps(
                list(self.info.labels if self.info.production_labels is None else self.info.production_labels)
            ),
        }
        self.catalog = load_catalog(settings.catalog, labels=self.labels)

    def _score(self, crops: np.ndarray) -> np.ndarray:
        if self.engine == "triton":
            return self._loop.run(self._scorer.score(crops))
        step = self.max_batch or len(crops)
        parts = [
            np.concatenate(self._session.run(self.info.outputs, {contract.INPUT_NAME: crops[i : i + step]}), axis=1)
            for i in range(0, len(crops), step)
        ]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def __call__(self, batch: dict) -> dict:
        n = len(batch["path"])
        rows = [
            {
                k: batch[k][i]
                for k in (
                    "path",
                    "profile",
                    "sha256",
                    "skip",
                    "error_kind",
                    "error_message",
                    "width",
                    "height",
                    "faces_total",
                    "boxes",
                    "node",
                )
            }
            for i in range(n)
        ]
        counts = [len(json.loads(r["boxes"])) if not r["skip"] and not r["error_kind"] else 0 for r in rows]
        scores_by_row: list = [None] * n
        if sum(counts):
            side = contract.INPUT_SIZE
            crops = np.concatenate(
                [
                    np.frombuffer(bytes(batch["crops"][i]), np.uint8).reshape(c, side, side, 3)
                    for i, c in enumerate(counts)
                    if c
                ]
            )
            try:
                scores = self._score(crops)
                start = 0
                for i, c in enumerate(counts):
                    if c:
                        scores_by_row[i] = scores[start : start + c]
                        start += c
            except (InferenceError, ServerUnavailableError) as exc:
                kind = "server_unavailable" if isinstance(exc, ServerUnavailableError) else "inference_error"
                for i, c in enumerate(counts):
                    if c:
                        rows[i]["error_kind"], rows[i]["error_message"] = kind, " ".join(str(exc).split())
            except RuntimeError as exc:  # onnxruntime's errors (local engine): this batch fails, the job goes on
                if self.engine != "local":
                    raise
                for i, c in enumerate(counts):
                    if c:
                        rows[i]["error_kind"], rows[i]["error_message"] = (
                            "inference_error",
                            " ".join(str(exc).split())[:300],
                        )
        out = defaultdict(list)
        for row, scores in zip(rows, scores_by_row):
            record = ""
            if not row["skip"]:
                error = {"kind": row["error_kind"], "message": row["error_message"]} if row["error_kind"] else None
                prepared = Prepared(
                    row["path"],
                    int(row["width"]),
                    int(row["height"]),
                    [Box(*b) for b in json.loads(row["boxes"])],
                    None,
                    int(row["faces_total"]),
                    error,
                )
                result = score_image(
                    prepared,
                    _text(row["profile"]) or None,
                    scores,
                    self.info,
                    self.catalog,
                    self.settings.skus_per_face,
                )
                record = result.to_json()
            for k in ("path", "profile", "sha256", "skip", "error_kind", "node"):
                out[k].append(row[k])
            out["record"].append(record)
            for k, v in self.model.items():
                out[k].append(v)
        if self.settings.pause_stage == "score":
            _maybe_pause(n, self.settings.pause_after, self.settings.pause_file)
        return dict(out)


def _local_session(settings: BatchSettings):
    """An onnxruntime session on the repository's model, checked against the contract, and its ModelInfo."""
    from face2hbe.graphs import cpu_session
    from face2hbe.repository import CPU_PRECISION, PRECISION_FOLDERS, validate_model_dir

    # The CPU default graph, as `face2hbe serve` runs it (docs/serving.md "CPU default"), so both engines agree.
    config, onnx_path = validate_model_dir(Path(settings.repository) / PRECISION_FOLDERS[CPU_PRECISION])
    session = cpu_session(onnx_path, threads=1)  # one core per actor; more actors for more cores
    return session, ModelInfo.from_config(config, contract.MODEL_NAME, contract.MODEL_VERSION)


# --- output: Parquet parts ---------------------------------------------------------------


def _schema():
    import pyarrow as pa

    sku = pa.struct(
        [
            ("sku", pa.string()),
            ("label", pa.string()),
            ("name", pa.string()),
            ("price", pa.float64()),
            ("url", pa.string()),
            ("min_score", pa.float64()),
            ("priority", pa.float64()),
            ("rank_score", pa.float64()),
        ]
    )
    face = pa.struct(
        [
            ("box", pa.list_(pa.int32())),
            ("scores", pa.map_(pa.string(), pa.float64())),
            ("labels", pa.list_(pa.string())),
            ("skus", pa.list_(sku)),
            ("attributes", pa.map_(pa.string(), pa.float64())),
            ("attribute_labels", pa.list_(pa.string())),
        ]
    )
    return pa.schema(
        [
            ("path", pa.string()),
            ("sha256", pa.string()),
            ("profile", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("faces", pa.list_(face)),
            ("faces_total", pa.int32()),
            ("top_label", pa.string()),
            ("recommendation", sku),
            ("reason", pa.string()),
            ("error", pa.struct([("kind", pa.string()), ("message", pa.string())])),
            ("error_kind", pa.string()),
            ("model_name", pa.string()),
            ("model_version", pa.string()),
            ("thresholds", pa.map_(pa.string(), pa.float64())),
            ("engine", pa.string()),
            ("attribute_thresholds", pa.map_(pa.string(), pa.float64())),
            ("production_labels", pa.list_(pa.string())),
            ("catalog_thresholds", pa.map_(pa.string(), pa.float64())),
            ("catalog_opt_in", pa.list_(pa.string())),
        ]
    )


def _row(record: dict, sha256: str, model: dict) -> dict:
    catalog = record.get("catalog") or {}
    return {
        **record,
        "sha256": sha256,
        "error_kind": (record.get("error") or {}).get("kind"),
        "model_name": model["model_name"],
        "model_version": model["model_version"],
        "thresholds": json.loads(model["thresholds"]),
        "engine": model["engine"],
        "attribute_thresholds": json.loads(model.get("attribute_thresholds") or "{}"),
        "production_labels": json.loads(model["production_labels"]) if model.get("production_labels") else None,
        "catalog_thresholds": catalog.get("thresholds"),
        "catalog_opt_in": catalog.get("opt_in"),
    }


def record_from_row(row: dict) -> dict:
    """recommend's JSON record (results.ImageResult) from one output row."""
    faces = [
        {
            "box": list(f["box"]),
            "scores": dict(f["scores"]),
            "labels": list(f["labels"]),
            "skus": list(f["skus"]),
            "attributes": dict(f.get("attributes") or []),
            "attribute_labels": list(f.get("attribute_labels") or []),
        }
        for f in row.get("faces") or []
    ]
    record = {
        "path": row["path"],
        "profile": row["profile"],
        "width": row["width"],
        "height": row["height"],
        "faces": faces,
        "top_label": row["top_label"],
        "recommendation": row["recommendation"],
        "reason": row["reason"],
        "error": row["error"],
    }
    if row.get("faces_total") is not None:
        record["faces_total"] = row["faces_total"]
    catalog = {
        k: v
        for k, v in (
            ("thresholds", dict(row.get("catalog_thresholds") or [])),
            ("opt_in", list(row.get("catalog_opt_in") or [])),
        )
        if v
    }
    if catalog:
        record["catalog"] = catalog
    return record


class OutputStore:
    """The output folder, on a local path or any filesystem pyarrow understands (a URI); parts written atomically.

    A part is written to a hidden temporary name (fsync'd on local disks) and moved to its
    final name: a rename on local and POSIX shared filesystems; on object stores the move is a
    server-side copy, so the final object appears whole or not at all.
    """

    def __init__(self, output: str | Path):
        import pyarrow.fs as pafs

        text = str(output)
        if _is_uri(text):
            self.fs, root = pafs.FileSystem.from_uri(text)
        else:
            self.fs, root = pafs.LocalFileSystem(), os.path.abspath(text)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.root = root.rstrip("/")

    def path(self, *names: str) -> str:
        return "/".join([self.root, *names])

    def names(self, folder: str = RESULTS_DIR) -> list[str]:
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.path(folder), allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)

    def parts(self) -> list[str]:
        return [n for n in self.names() if n.startswith(PART_PREFIX) and n.endswith(".parquet")]

    def write_atomic(self, table, name: str, folder: str | None = RESULTS_DIR) -> str:
        import pyarrow.parquet as pq

        where = [folder] if folder else []
        self.fs.create_dir(self.path(*where), recursive=True)
        final = self.path(*where, name)
        tmp = self.path(*where, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
        pq.write_table(table, tmp, filesystem=self.fs)
        if self.local:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.fs.move(tmp, final)
        return final

    def read(self, name: str, columns=None):
        import pyarrow.parquet as pq

        return pq.read_table(self.path(RESULTS_DIR, name), columns=columns, filesystem=self.fs)

    def delete(self, name: str) -> None:
        self.fs.delete_file(self.path(RESULTS_DIR, name))


def _part_name(keys) -> str:
    digest = hashlib.sha256("\n".join(f"{p}\t{h}" for p, h in sorted(keys)).encode()).hexdigest()[:32]
    return f"{PART_PREFIX}{digest}.parquet"


def write_stage(batch: dict, output: str) -> dict:
    """Write the batch's new rows as one part (atomic rename); return one row of counts for the summary."""
    import pyarrow as pa

    n = len(batch["path"])
    rows, summary = [], RunSummary()
    skipped = 0
    error_lines = []
    nodes: Counter = Counter()
    for i in range(n):
        if batch["skip"][i]:
            skipped += 1
            continue
        if batch["node"][i]:
            nodes[str(batch["node"][i])] += 1
        record = json.loads(batch["record"][i])
        model = {
            k: batch[k][i]
            for k in (
                "model_name",
                "model_version",
                "thresholds",
                "engine",
                "attribute_thresholds",
                "production_labels",
            )
        }
        rows.append(_row(record, str(batch["sha256"][i]), model))
        result = image_result_from_record(record)
        _count(summary, result)
        if result.error:
            error_lines.append(f"{result.path}: {result.error['kind']}: {result.error['message']}")
    part = ""
    if rows:
        table = pa.Table.from_pylist(rows, schema=_schema())
        part = _part_name((r["path"], r["sha256"]) for r in rows)
        OutputStore(output).write_atomic(table, part)
    counts = {
        "images": summary.images,
        "skipped": skipped,
        "faces": summary.faces,
        "recommendations": dict(summary.recommendations),
        "reasons": dict(summary.reasons),
        "errors": dict(summary.errors),
        "error_reasons": [[k, m, c] for (k, m), c in summary.error_reasons.items()],
        "error_lines": error_lines[:MAX_LOGGED_ERRORS],
        "nodes": dict(nodes),
    }
    return {"counts": [json.dumps(counts)], "part": [part]}


def _count(summary: RunSummary, result: ImageResult) -> None:
    level = logging.getLogger("face2hbe.client.recommend").level
    logging.getLogger("face2hbe.client.recommend").setLevel(logging.CRITICAL)  # errors are logged once, by the driver
    try:
        Recommender._count(summary, result)
    finally:
        logging.getLogger("face2hbe.client.recommend").setLevel(level)


def reconcile(output: str | Path, drop_retryable: bool) -> tuple[set, int, int]:
    """Make the parts hold each (path, sha256) key once; with `drop_retryable`, drop retryable error rows too.

    Returns (keys kept, rows kept, rows dropped). A part that loses rows is rewritten (the new
    part first, then the old one removed), so a kill at any point leaves at worst duplicates,
    which the next call removes.
    """
    import pyarrow as pa

    store = OutputStore(output)
    store.fs.create_dir(store.path(RESULTS_DIR), recursive=True)
    for name in store.names():
        if name.startswith(".") and name.endswith(".tmp"):  # cut by a kill before its move
            store.delete(name)
    seen: set = set()
    dropped = 0
    for part in store.parts():
        keys = store.read(part, columns=["path", "sha256", "error_kind"]).to_pydict()
        keep = []
        for path, digest, kind in zip(keys["path"], keys["sha256"], keys["error_kind"]):
            ok = (path, digest) not in seen and not (drop_retryable and kind in BATCH_RETRYABLE)
            keep.append(ok)
            if ok:
                seen.add((path, digest))
        if all(keep):
            continue
        dropped += keep.count(False)
        table = store.read(part).filter(pa.array(keep))
        name = (
            _part_name(zip(table.column("path").to_pylist(), table.column("sha256").to_pylist()))
            if table.num_rows
            else None
        )
        if name is not None:
            store.write_atomic(table, name)  # same name (duplicates inside one part): replaced in place
        if name != part:
            store.delete(part)
    return seen, len(seen), dropped


def read_output(output: str | Path, columns=None) -> list[dict]:
    """Every row of a batch output folder (local path or URI), as dicts."""
    store = OutputStore(output)
    rows = []
    for part in store.parts():
        rows.extend(store.read(part, columns=columns).to_pylist())
    return rows


# --- the job -------------------------------------------------------------------------------


def _source_datasets(paths, settings: BatchSettings):
    import ray

    items, manifests = split_inputs(paths)
    datasets = []
    if items:
        datasets.append(ray.data.from_items([{"path": p, "profile": prof or ""} for p, prof in items]))
    for manifest in manifests:
        ds = ray.data.read_csv(manifest) if manifest.lower().endswith(".csv") else ray.data.read_parquet(manifest)
        try:
            names = ds.schema().names
        except Exception as exc:
            raise InputError(f"{manifest}: cannot read the manifest ({' '.join(str(exc).split())[:300]})") from None
        if "path" not in names:
            raise InputError(f"{manifest}: the manifest has no 'path' column (columns: {', '.join(names)})")
        datasets.append(ds.select_columns(["path", "profile"] if "profile" in names else ["path"]))
    if not datasets:
        raise InputError("no inputs: give folders, image files, a .txt list of paths or a Parquet/CSV manifest")
    return datasets


def build_pipeline(paths, settings: BatchSettings, done_ref):
    """The Ray Data plan: read -> prepare (CPU tasks) -> score (actor pool) -> write parts."""
    import ray

    cpu = {"num_cpus": 1, "max_retries": -1}  # a killed task is rerun
    if settings.cpu_workers:
        cpu["compute"] = ray.data.TaskPoolStrategy(size=settings.cpu_workers)
    stages = []
    for ds in _source_datasets(paths, settings):
        ds = ds.map_batches(
            read_stage,
            batch_size=settings.images_per_task,
            batch_format="numpy",
            fn_kwargs={"done_ref": done_ref, "max_file_bytes": settings.limits.max_file_bytes},
            **cpu,
        )
        stages.append(ds)
    ds = stages[0].union(*stages[1:]) if len(stages) > 1 else stages[0]
    ds = ds.map_batches(
        prepare_stage,
        batch_size=settings.images_per_task,
        batch_format="numpy",
        fn_kwargs={
            "detector": settings.detector,
            "limits": settings.limits,
            "pause": (settings.pause_after, settings.pause_file) if settings.pause_stage == "prepare" else None,
        },
        **cpu,
    )
    in_flight = max(1, settings.client.max_in_flight)
    ds = ds.map_batches(
        ScoreStage,
        fn_constructor_kwargs={"settings": settings},
        batch_size=settings.images_per_task,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(
            size=settings.scorers, max_concurrent_calls_per_actor=in_flight, enable_true_multi_threading=True
        ),
        # Triton does the work for "triton"; onnxruntime uses one core per actor for "local".
        num_cpus=1 if settings.engine == "local" else 0,
        max_restarts=-1,
        max_task_retries=-1,  # a killed actor is restarted and its calls retried
    )
    # No CPU reserved for the writes (one small task per part): a fraction of one kept Ray Data's budget for
    # detection under 2 CPUs on a 2-CPU machine, so detection ran one task at a time (docs/batch.md "Why it lost").
    ds = ds.map_batches(
        write_stage,
        batch_size=settings.rows_per_part,
        batch_format="numpy",
        fn_kwargs={"output": str(settings.output)},
        num_cpus=0,
        max_retries=-1,
    )
    return ds


def stage_throughput(stats_text: str) -> list[dict]:
    """Per-operator rows/s and time from Ray Data's `ds.stats()` text."""
    stages = []
    for block in re.split(r"\n(?=Operator \d+ )", stats_text):
        head = re.match(r"Operator \d+ ([^:]+):\s*(\d+) tasks executed, (\d+) blocks produced in ([\d.]+)s", block)
        if not head:
            continue
        rows_in = re.search(r"Total input num rows: (\d+)", block)
        rows_out = re.search(r"Total output num rows: (\d+)", block)
        throughput = re.search(r"Ray Data throughput: ([\d.]+) rows/s", block)
        single = re.search(r"Estimated single (?:task|node) throughput: ([\d.]+) rows/s", block)
        # Rates are Ray's output rows/s; stages that take images in (write: one row per part out) are
        # converted to images/s with their input/output ratio.
        n_in, n_out = (int(m.group(1)) if m else 0 for m in (rows_in, rows_out))
        scale = n_in / n_out if n_in and n_out else 1.0
        stages.append(
            {
                "stage": re.sub(r"MapBatches\((\w+)\)", r"\1", head.group(1).strip()),
                "tasks": int(head.group(2)),
                "seconds": float(head.group(4)),
                "rows": n_in or n_out,
                "rows_per_s": round(float(throughput.group(1)) * scale, 2) if throughput else None,
                "rows_per_s_per_task": round(float(single.group(1)) * scale, 2) if single else None,
            }
        )
    return stages


def run_batch(paths, settings: BatchSettings = BatchSettings()) -> BatchSummary:
    """Process every image under `paths` into `settings.output` (results/ parts, profiles.parquet, optional JSONL)."""
    import ray

    from .catalog import load_catalog

    started = time.perf_counter()
    output = str(settings.output)
    summary = BatchSummary()
    done, _, dropped = reconcile(output, drop_retryable=True)
    catalog = load_catalog(settings.catalog)  # fails fast on a bad catalog, before Ray starts
    clock = time.perf_counter()
    owns_ray = init_ray(settings.address, settings.num_cpus, settings.object_store_bytes)
    summary.phases["ray_start"] = time.perf_counter() - clock
    try:
        clock = time.perf_counter()
        stage_lines = configure_progress(settings.progress)
        with warnings.catch_warnings():
            # Retries are set explicitly as Ray remote options (max_retries, max_restarts, max_task_retries),
            # which Ray 2.60 flags as a deprecated way of passing them.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            ds = build_pipeline(paths, settings, ray.put(done))
        with quiet_stderr():
            _collect(ds, summary)
        summary.stats_text = ds.stats()
        summary.stages = stage_throughput(summary.stats_text)
        summary.phases["pipeline"] = time.perf_counter() - clock
        if stage_lines:
            for stage in summary.stages:
                log.info("%s", stage_line(stage))
    except ray.exceptions.RayError as exc:  # Ray wraps what a task or an actor raised: report our error, in one line
        raise _user_error(exc) from None
    finally:
        if owns_ray:
            clock = time.perf_counter()
            ray.shutdown()
            summary.phases["ray_stop"] = time.perf_counter() - clock
    clock = time.perf_counter()
    _, summary.output_rows, dropped_at_end = reconcile(output, drop_retryable=False)
    summary.duplicates_dropped = dropped + dropped_at_end
    _finish(output, settings.jsonl, summary, catalog)
    summary.phases["finish"] = time.perf_counter() - clock
    summary.seconds = time.perf_counter() - started
    return summary


def _collect(ds, summary: BatchSummary) -> None:
    """Run the pipeline: add each written part's counts to the summary, log its error rows (at most MAX_LOGGED_ERRORS)."""
    logged = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for counts in batch["counts"]:
            c = json.loads(counts)
            summary.images += c["images"]
            summary.skipped += c["skipped"]
            summary.faces += c["faces"]
            summary.recommendations.update(c["recommendations"])
            summary.reasons.update(c["reasons"])
            summary.errors.update(c["errors"])
            for kind, message, n in c["error_reasons"]:
                summary.error_reasons[(kind, message)] += n
            summary.detection_nodes.update(c["nodes"])
            for line in c["error_lines"]:
                if logged < MAX_LOGGED_ERRORS:
                    log.error("%s", line)
                logged += 1
    if logged > MAX_LOGGED_ERRORS:
        log.error("%d more error rows not logged: see the output's error column", logged - MAX_LOGGED_ERRORS)


def stage_line(stage: dict) -> str:
    """One stage's line: images, tasks, seconds and rate (Ray Data's stats)."""
    rate = f", {stage['rows_per_s']:.1f} images/s" if stage["rows_per_s"] is not None else ""
    per_task = f" ({stage['rows_per_s_per_task']:.1f} per task)" if stage["rows_per_s_per_task"] is not None else ""
    return f"stage {stage['stage']}: {stage['rows']} images, {stage['tasks']} tasks, {stage['seconds']:.1f} s{rate}{per_task}"


def _finish(output: str, jsonl: Path | None, summary: BatchSummary, catalog) -> None:
    """One pass over the parts, a part at a time: error counts, the model, the JSONL, then profiles.parquet."""
    store = OutputStore(output)
    by_profile: dict[str, list[ImageResult]] = defaultdict(list)
    tmp = Path(f"{jsonl}.tmp") if jsonl else None
    if tmp:
        tmp.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("w", encoding="utf-8") if tmp else open(os.devnull, "w") as lines:
        for part in store.parts():
            for row in store.read(part).to_pylist():
                if row["error_kind"]:
                    summary.output_errors[row["error_kind"]] += 1
                if not summary.model:
                    summary.model = {k: row[k] for k in ("model_name", "model_version", "engine")}
                    summary.model["thresholds"] = dict(row["thresholds"] or [])
                    summary.model["attribute_thresholds"] = dict(row.get("attribute_thresholds") or [])
                    summary.model["production_labels"] = row.get("production_labels")
                record = record_from_row(row)
                if record["profile"]:
                    by_profile[record["profile"]].append(image_result_from_record(record))
                lines.write(json.dumps(record, ensure_ascii=False) + "\n")
    if tmp:
        os.replace(tmp, jsonl)
    labels = [*(summary.model.get("thresholds") or contract.LABELS), *(summary.model.get("attribute_thresholds") or [])]
    summary.profiles = write_profiles(output, by_profile, labels, catalog, summary.model.get("production_labels"))


def _user_error(exc: BaseException) -> Face2hbeError:
    """The face2hbe error behind a Ray failure (e.g. Triton down when the scoring actors start), else a one-line one."""
    seen, stack = set(), [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, Face2hbeError):
            return e
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    text = str(exc)
    found = re.search(r"face2hbe\.errors\.(\w+): ([^\n]+)", text)
    if found:  # the actor's traceback, as text only
        from face2hbe import errors

        cls = getattr(errors, found.group(1), Face2hbeError)
        try:
            return cls(found.group(2).strip())
        except TypeError:  # errors with other constructors (BadImageError)
            return Face2hbeError(found.group(2).strip())
    return Face2hbeError(f"batch job failed: {' '.join(text.split())[:500]}")


def write_profiles(
    output: str | Path,
    by_profile: dict[str, list[ImageResult]],
    labels: list[str],
    catalog,
    production: list[str] | None = None,
) -> list:
    """profiles.parquet: recommend's aggregate_profile for each profile's images."""
    import pyarrow as pa

    profiles = [aggregate_profile(p, results, labels, catalog, production) for p, results in sorted(by_profile.items())]
    rows = [
        {
            "profile": p.profile,
            "images": p.images,
            "images_with_faces": p.images_with_faces,
            "share": p.share,
            "top_label": p.top_label,
            "recommendation": json.dumps(p.recommendation) if p.recommendation else None,
            "reason": p.reason,
        }
        for p in profiles
    ]
    schema = pa.schema(
        [
            ("profile", pa.string()),
            ("images", pa.int64()),
            ("images_with_faces", pa.int64()),
            ("share", pa.map_(pa.string(), pa.float64())),
            ("top_label", pa.string()),
            ("recommendation", pa.string()),
            ("reason", pa.string()),
        ]
    )
    OutputStore(output).write_atomic(pa.Table.from_pylist(rows, schema=schema), PROFILES_FILE, folder=None)
    return profiles


def summary_rows(summary: BatchSummary) -> list[tuple[str, str]]:
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
