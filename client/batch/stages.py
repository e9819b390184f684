"""The batch job's Ray Data stages (module-level functions and a class: Ray pickles them by reference).

    read_stage     bytes and sha256 of each image; keys already in the output are skipped
    prepare_stage  decode, EXIF, detect, crop: recommend's own prepare_image (CPU tasks)
    ScoreStage     an actor: Triton over gRPC (AsyncScorer) or onnxruntime in-process (engine "local", the CPU
                   default graph through graphs.cpu_session), then recommend's per-image record (score_image)
    write_stage    one Parquet part per block (store.OutputStore, atomic), and the block's counts for the summary

Face crops travel from prepare_stage to ScoreStage in Ray's object store, in memory only: never written, logged
or returned.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from face2hbe import contract
from face2hbe.detection import DetectorSettings
from face2hbe.errors import BadImageError, InferenceError, ServerUnavailableError
from face2hbe.graphs import cpu_session, score_crops
from face2hbe.imaging import Box

from ..catalog import load_catalog
from ..hold import hold
from ..inference import AsyncScorer, ClientSettings, ModelInfo
from ..recommend import Limits, Prepared, RunSummary, prepare_image, score_image
from ..results import image_result_from_record
from .inputs import read_image_bytes
from .store import OutputStore, output_row, part_name, schema

MAX_LOGGED_ERRORS = 1000  # error lines a block sends back for the driver's log


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


def prepare_stage(batch: dict, detector: DetectorSettings, limits: Limits) -> dict:
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
    hold("prepare", n)  # the test hook (client/hold.py): inert unless a test asked
    return out


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

    def __init__(self, engine: str, client: ClientSettings, repository: Path, catalog, skus_per_face: int):
        self.engine, self.skus_per_face = engine, skus_per_face
        if engine == "triton":
            self._loop = _Loop()
            self._scorer = AsyncScorer(client)
            self.info = self._loop.run(self._scorer.connect())
        else:
            self._session, self.info = local_session(repository)
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
        self.catalog = load_catalog(catalog, labels=self.labels)

    def _score(self, crops: np.ndarray) -> np.ndarray:
        if self.engine == "triton":
            return self._loop.run(self._scorer.score(crops))
        return score_crops(self._session, crops, self.info.outputs, self.max_batch or max(1, len(crops)))

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
                    self.skus_per_face,
                )
                record = result.to_json()
            for k in ("path", "profile", "sha256", "skip", "error_kind", "node"):
                out[k].append(row[k])
            out["record"].append(record)
            for k, v in self.model.items():
                out[k].append(v)
        hold("score", n)  # the test hook (client/hold.py): inert unless a test asked
        return dict(out)


def local_session(repository: Path):
    """Engine "local": an onnxruntime session on the repository's CPU default file (INT8), checked against the
    contract, and its ModelInfo."""
    from face2hbe.repository import CPU_PRECISION, PRECISION_FOLDERS, validate_model_dir

    # The CPU default graph, as `face2hbe serve` runs it (docs/serving.md "CPU default"), so both engines agree.
    config, onnx_path = validate_model_dir(Path(repository) / PRECISION_FOLDERS[CPU_PRECISION])
    session = cpu_session(onnx_path, threads=1)  # one core per actor; more actors for more cores
    return session, ModelInfo.from_config(config, contract.MODEL_NAME, contract.MODEL_VERSION)


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
        rows.append(output_row(record, str(batch["sha256"][i]), model))
        result = image_result_from_record(record)
        summary.add(result)  # errors are logged once, by the driver (error_lines)
        if result.error:
            error_lines.append(f"{result.path}: {result.error['kind']}: {result.error['message']}")
    part = ""
    if rows:
        table = pa.Table.from_pylist(rows, schema=schema())
        part = part_name((r["path"], r["sha256"]) for r in rows)
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
