"""The batch job on Ray Data: millions of photos -> faces -> scores -> SKUs -> Parquet.

    face2hbe batch photos/ more.txt manifest.parquet --output out/batch [--engine local] [--address ray://...]

Stages (Ray Data operators, stages.py; the first two fuse into one CPU task):

1. read bytes (inputs.py: local paths, or any filesystem pyarrow understands), sha256 of the
   content; images already in the output (same path and content hash) are skipped;
2. decode + EXIF + detect + crop: `recommend`'s own `prepare_image`, on CPU tasks;
3. score: a bounded pool of actors, each calling Triton over gRPC (AsyncScorer,
   labels and thresholds from the served config) or, with `engine="local"`, an
   onnxruntime session on the repository's CPU default file (INT8); then the per-image
   record (`recommend.score_image`, the same function `recommend` uses);
4. write: each block becomes one Parquet part file (store.py), written to a temporary name
   and moved (renamed) to a name made of a hash of the image keys it holds.

Face crops travel between stages 2 and 3 in Ray's object store, in memory only;
they are never written, logged or returned. A local Ray started here has object
spilling turned off so they never reach the disk.

Exactly once: a rerun reads the parts already written, drops duplicate keys
(a retried write after a kill) and retryable errors (server trouble, unreadable
files), and skips every key left. Ray retries killed tasks and restarts killed
actors (and retries their tasks). The run ends with the same reconciliation.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from face2hbe import contract
from face2hbe.detection import DetectorSettings

from ..catalog import load_catalog
from ..inference import ClientSettings
from ..ray_runtime import configure_progress, init_ray, quiet_stderr, stage_line, stage_throughput, user_error
from ..recommend import Limits, RunSummary
from ..results import ImageResult, image_result_from_record
from .inputs import source_datasets
from .stages import MAX_LOGGED_ERRORS, ScoreStage, prepare_stage, read_stage, write_stage
from .store import OutputStore, reconcile, record_from_row, write_profiles

log = logging.getLogger(__package__)  # "face2hbe.client.batch": the name users filter on

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


def build_pipeline(paths, settings: BatchSettings, done_ref):
    """The Ray Data plan: read -> prepare (CPU tasks) -> score (actor pool) -> write parts."""
    import ray

    cpu = {"num_cpus": 1, "max_retries": -1}  # a killed task is rerun
    if settings.cpu_workers:
        cpu["compute"] = ray.data.TaskPoolStrategy(size=settings.cpu_workers)
    stages = []
    for ds in source_datasets(paths):
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
        fn_kwargs={"detector": settings.detector, "limits": settings.limits},
        **cpu,
    )
    in_flight = max(1, settings.client.max_in_flight)
    ds = ds.map_batches(
        ScoreStage,
        fn_constructor_kwargs={
            "engine": settings.engine,
            "client": settings.client,
            "repository": settings.repository,
            "catalog": settings.catalog,
            "skus_per_face": settings.skus_per_face,
        },
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


def run_batch(paths, settings: BatchSettings = BatchSettings()) -> BatchSummary:
    """Process every image under `paths` into `settings.output` (results/ parts, profiles.parquet, optional JSONL)."""
    import ray

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
        raise user_error(exc) from None
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
