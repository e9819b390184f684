"""`face2hbe batch` against `face2hbe recommend` on the same photos: wall time and where the CPU goes.

One embedded Triton server (own free ports) scores for every run; the photos are real (the first
N LFW photos through symlinks in a temporary folder, as loadtest/bench/e2e.py; the bundled samples
repeated without LFW). Each run is the real command in its own process, timed from start to exit
(interpreter start-up, imports, Ray's start-up and shut-down included), with a fresh output:

    face2hbe batch PHOTOS --url URL --output OUT --no-progress [variant options]
    face2hbe recommend PHOTOS --url URL --output OUT.jsonl --no-progress

Runs are interleaved (batch, recommend, batch, recommend, ...), so on a shared machine both see
the same load; the ratio is recommend's median wall time over batch's (1.0 = as fast, above 1 =
batch faster). Beside the wall time, the CPU seconds each run cost, by process (sampled every
0.2 s): the client (recommend's process; batch's driver), Ray's task workers (read + detect +
write), the scoring actor, Ray's own processes (GCS, raylet, dashboard, agents, Ray Data's
internal actors) and the Triton server; and, for batch, the phases its summary reports (Ray
start-up, pipeline, shut-down).

    python -m face2hbe.loadtest.bench.batch --photos 2244 --rounds 2 --json docs/bench/batch.json
    python -m face2hbe.loadtest.bench.batch --photos 500 --variant "8 per task=--images-per-task 8"
    python -m face2hbe.loadtest.bench.batch --photos 60 --rounds 0 --sizing   # per-core rates only
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from face2hbe.net import free_port

from .common import DEFAULT_LFW, DEFAULT_REPOSITORY
from .e2e import photo_folder

RAY_SYSTEM = (
    "gcs_server",
    "raylet",
    "dashboard",
    "monitor.py",
    "log_monitor",
    "DashboardAgent",
    "RuntimeEnvAgent",
    "_StatsActor",
    "_AutoscalingCoordinatorActor",
    "ActorLocationTracker",
)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:
        return platform.processor() or "unknown"


def _category(cmdline: str, root: bool, server: bool) -> tuple[str, bool]:
    """(category, final): a Ray worker is named after what it runs once it runs something (ray::IDLE before)."""
    if server:
        return "triton", True
    if root:
        return "client", True
    program = Path(cmdline.split()[0]).name if cmdline else ""
    if program in ("raylet", "gcs_server"):
        return "ray_system", True
    title = cmdline.split()[0] if cmdline.startswith("ray::") else ""
    if title:
        if any(name in title for name in RAY_SYSTEM):
            return "ray_system", True
        if "ScoreStage" in title:
            return "scoring_actor", True
        return "ray_task_workers", title != "ray::IDLE"
    if "default_worker.py" in cmdline:  # a worker before its first task or actor
        return "ray_task_workers", False
    if any(name in cmdline for name in RAY_SYSTEM):
        return "ray_system", True
    return "other", True


def _title(cmdline: str) -> str:
    """A short process name: Ray's title (ray::X), else the program or script."""
    if cmdline.startswith("ray::"):
        return cmdline.split()[0]
    words = cmdline.split()
    script = next((Path(w).name for w in words[1:3] if w.endswith(".py")), None)
    return script or (Path(words[0]).name if words else "?")


class CpuSampler:
    """CPU seconds (user + system) of two process trees, every process seen, until stop(); by _category.

    A process's CPU after its last sample (at most `interval` before it ended) is not counted.
    """

    def __init__(self, server_pid: int | None, interval: float = 0.2):
        import psutil

        self._psutil, self.interval = psutil, interval
        self.server_pid, self.root_pid = server_pid, None
        self._seen: dict[int, tuple[str, bool, float]] = {}
        self._titles: dict[int, str] = {}
        self._base = {p.pid: self._cpu(p) for p in self._tree(server_pid)}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _tree(self, pid):
        if pid is None:
            return []
        try:
            root = self._psutil.Process(pid)
            return [root, *root.children(recursive=True)]
        except self._psutil.Error:
            return []

    @staticmethod
    def _cpu(proc) -> float:
        try:
            times = proc.cpu_times()
            return times.user + times.system
        except Exception:
            return 0.0

    def start(self, root_pid: int) -> "CpuSampler":
        self.root_pid = root_pid
        self._thread.start()
        return self

    def _sample(self) -> None:
        for server, pid in ((True, self.server_pid), (False, self.root_pid)):
            for proc in self._tree(pid):
                try:
                    cmdline = " ".join(proc.cmdline())
                except self._psutil.Error:
                    continue
                cpu = self._cpu(proc) - self._base.get(proc.pid, 0.0)
                known = self._seen.get(proc.pid)
                category, final = known[:2] if known and known[1] else _category(cmdline, proc.pid == pid, server)
                self._seen[proc.pid] = (category, final, max(cpu, known[2] if known else 0.0))
                if self._titles.get(proc.pid, "ray::IDLE") in ("ray::IDLE", "default_worker.py"):
                    self._titles[proc.pid] = _title(cmdline)  # a worker keeps the name of the first thing it ran

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> tuple[dict[str, float], dict[str, float]]:
        """CPU seconds by category, and by process title (processes of one title added up)."""
        self._sample()
        self._stop.set()
        self._thread.join()
        totals: Counter = Counter()
        titles: Counter = Counter()
        for pid, (category, _, cpu) in self._seen.items():
            totals[category] += cpu
            titles[f"{category}: {self._titles.get(pid, '?')}"] += cpu
        return (
            {k: round(v, 1) for k, v in sorted(totals.items())},
            {k: round(v, 1) for k, v in titles.most_common() if v >= 0.05},
        )


def _phases(report: str) -> dict[str, float]:
    """The batch summary's time row: Ray start-up, pipeline, Ray shut-down, finish (seconds)."""
    found = re.search(
        r"Ray start-up ([\d.]+) s, pipeline ([\d.]+) s, Ray shut-down ([\d.]+) s, finish ([\d.]+) s", report
    )
    keys = ("ray_start_s", "pipeline_s", "ray_stop_s", "finish_s")
    return dict(zip(keys, map(float, found.groups()))) if found else {}


def _faces_in_jsonl(path: Path) -> tuple[int, int]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return len(records), sum(len(r["faces"]) for r in records)


def _run(kind: str, name: str, command: list[str], output: Path, server_pid: int | None) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    sampler = CpuSampler(server_pid).start(proc.pid)
    report, _ = proc.communicate()
    seconds = time.perf_counter() - started
    cpu, cpu_by_process = sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{name} exited with {proc.returncode}:\n{report[-3000:]}")
    images, faces = _faces_in_jsonl(output)
    row = {
        "kind": kind,
        "row": name,
        "seconds": round(seconds, 2),
        "images": images,
        "faces": faces,
        "photos_per_s": round(images / seconds, 2),
        "cpu_s": cpu,
        "cpu_s_by_process": cpu_by_process,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    if kind == "batch":
        row["phases"] = _phases(report)
        row["log_lines"] = [line for line in report.splitlines() if not line.startswith(("│", "┃", "┏", "┡", "└", " "))]
    return row


def detection_rates(paths: list[Path], limit: int = 60) -> dict:
    """Photos/s of recommend's prepare_image in this process (one core): as stored, and upscaled to 800 px JPEGs."""
    from PIL import Image

    from face2hbe.client.recommend import Limits, prepare_image
    from face2hbe.detection import DetectorSettings, load_detector

    detector, limits = DetectorSettings(), Limits()
    load_detector(detector.model)
    paths = paths[:limit]
    data = [p.read_bytes() for p in paths]
    big = []
    for raw in data:
        buf = io.BytesIO()
        Image.open(io.BytesIO(raw)).convert("RGB").resize((800, 800), Image.BICUBIC).save(buf, "JPEG", quality=90)
        big.append(buf.getvalue())
    rates = {}
    crops = []
    for name, blobs in (("stored", data), ("800px", big)):
        started = time.perf_counter()
        for path, blob in zip(paths, blobs):
            prepared = prepare_image(str(path), detector, limits, data=blob)
            if name == "stored" and prepared.crops is not None:
                crops.append(prepared.crops)
        rates[name] = round(len(blobs) / (time.perf_counter() - started), 2)
    size = Image.open(io.BytesIO(data[0])).size
    return {
        "photos": len(paths),
        "stored_size": list(size),
        "photos_per_s_per_core": rates["stored"],
        "photos_per_s_per_core_800px": rates["800px"],
        "crops": np.concatenate(crops) if crops else None,
    }


def scoring_rates(crops: np.ndarray, repository: Path, seconds: float = 8.0) -> dict:
    """Faces/s of one onnxruntime session on the served model, batches of 32: 1 intra-op thread and the default."""
    from face2hbe import contract
    from face2hbe.graphs import cpu_session

    onnx_path = Path(repository) / contract.MODEL_NAME / contract.MODEL_VERSION / "model.onnx"
    batch = np.resize(crops, (32, *crops.shape[1:])).astype(np.uint8)
    rates = {}
    for threads in (1, None):
        session = cpu_session(onnx_path, threads=threads, spin=True)
        session.run(None, {contract.INPUT_NAME: batch})
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            session.run(None, {contract.INPUT_NAME: batch})
            done += len(batch)
        rates["1_thread" if threads else "default_threads"] = round(done / (time.perf_counter() - started), 2)
    return {
        "faces_per_s_1_thread": rates["1_thread"],
        "faces_per_s_default_threads": rates["default_threads"],
        "batch": 32,
    }


def run_batch_bench(
    photos: int = 2244,
    rounds: int = 2,
    repository: Path = DEFAULT_REPOSITORY,
    lfw_dir: Path = DEFAULT_LFW,
    variants: dict[str, list[str]] | None = None,
    recommend_args: list[str] | None = None,
    sizing: bool = False,
) -> dict:
    from face2hbe.serving.embedded import EmbeddedServer, ServerSettings

    variants = variants or {"batch": []}
    face2hbe = [sys.executable, "-m", "face2hbe.app.cli"]
    result: dict = {
        "photos": photos,
        "rounds": rounds,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "variants": {k: shlex.join(v) for k, v in variants.items()},
        "recommend_args": shlex.join(recommend_args or []),
        "rows": [],
    }
    try:
        import ray

        result["ray"] = ray.__version__
    except ImportError:
        pass
    server = EmbeddedServer(
        ServerSettings(Path(repository), http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    ).start()
    url = f"127.0.0.1:{server.settings.grpc_port}"
    server_pid = server.process.pid if getattr(server, "process", None) else None
    try:
        with tempfile.TemporaryDirectory(prefix="face2hbe-batch-bench-") as tmp:
            folder, source = photo_folder(Path(tmp) / "photos", photos, Path(lfw_dir))
            result["source"] = source
            for r in range(rounds):
                for name, args in variants.items():
                    out = Path(tmp) / f"batch-{r}-{len(result['rows'])}"
                    jsonl = Path(f"{out}.jsonl")
                    row = _run(
                        "batch",
                        name,
                        [
                            *face2hbe,
                            "batch",
                            str(folder),
                            "--url",
                            url,
                            "--output",
                            str(out),
                            "--jsonl",
                            str(jsonl),
                            *args,
                        ],
                        jsonl,
                        server_pid,
                    )
                    result["rows"].append({"round": r + 1, **row})
                    _print_row(result["rows"][-1])
                jsonl = Path(tmp) / f"recommend-{r}.jsonl"
                row = _run(
                    "recommend",
                    "recommend",
                    [
                        *face2hbe,
                        "recommend",
                        str(folder),
                        "--url",
                        url,
                        "--output",
                        str(jsonl),
                        "--no-progress",
                        *(recommend_args or []),
                    ],
                    jsonl,
                    server_pid,
                )
                result["rows"].append({"round": r + 1, **row})
                _print_row(result["rows"][-1])
            if sizing:  # per-core rates for docs/batch.md "Sizing", in this process
                rates = detection_rates(sorted(Path(folder).iterdir()))
                crops = rates.pop("crops")
                result["detection"] = rates
                if crops is not None:
                    result["scoring"] = scoring_rates(crops, Path(repository))
    finally:
        server.stop()
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["summary"] = {}
    if not result["rows"]:
        return result
    recommend_s = statistics.median(r["seconds"] for r in result["rows"] if r["kind"] == "recommend")
    result["recommend_median_s"] = round(recommend_s, 2)
    for name in variants:
        rows = [r for r in result["rows"] if r["row"] == name]
        batch_s = statistics.median(r["seconds"] for r in rows)
        per_round = []
        for r in rows:
            rec = next(x for x in result["rows"] if x["kind"] == "recommend" and x["round"] == r["round"])
            per_round.append(round(rec["seconds"] / r["seconds"], 3))
        result["summary"][name] = {
            "median_s": round(batch_s, 2),
            "speed_vs_recommend": round(recommend_s / batch_s, 3),
            "speed_vs_recommend_per_round": per_round,
        }
    return result


def _print_row(row: dict) -> None:
    cpu = ", ".join(f"{k} {v:.1f}" for k, v in row["cpu_s"].items())
    phases = ", ".join(f"{k[:-2]} {v:.1f}" for k, v in row.get("phases", {}).items())
    print(
        f"round {row['round']} {row['row']:24} {row['seconds']:7.1f} s {row['photos_per_s']:6.2f} photos/s {row['faces']:5d} faces "
        f"| CPU s: {cpu}{' | ' + phases if phases else ''} | load {row['load_average_1min']}",
        flush=True,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m face2hbe.loadtest.bench.batch", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--photos", type=int, default=2244, help="Real photos (LFW; the samples repeated without it).")
    parser.add_argument(
        "--rounds", type=int, default=2, help="Rounds of (each batch variant, then recommend); 0 with --sizing."
    )
    parser.add_argument(
        "--repository", type=Path, default=DEFAULT_REPOSITORY, help="Model repository for the embedded server."
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=OPTIONS",
        help="A batch row with these extra `face2hbe batch` options (repeatable); default: one row, no options.",
    )
    parser.add_argument("--recommend-options", default="", help="Extra `face2hbe recommend` options.")
    parser.add_argument(
        "--sizing",
        action="store_true",
        help="Also measure detection photos/s per core (as stored and at "
        "800x800) and scoring faces/s of one onnxruntime session (docs/batch.md, Sizing).",
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures to this JSON file.")
    args = parser.parse_args(argv)
    variants = {}
    for spec in args.variant:
        name, _, options = spec.partition("=")
        variants[name.strip()] = shlex.split(options)
    result = run_batch_bench(
        photos=args.photos,
        rounds=args.rounds,
        repository=args.repository,
        variants=variants or None,
        recommend_args=shlex.split(args.recommend_options),
        sizing=args.sizing,
    )
    print(
        f"{result['photos']} photos ({result['source']}); {result['cpu_model']}, {result['cpu_count']} CPUs; "
        f"load average before/after {result['load_average_before']} / {result['load_average_after']}"
    )
    for name, s in result["summary"].items():
        print(
            f"{name}: median {s['median_s']} s vs recommend {result['recommend_median_s']} s: "
            f"{s['speed_vs_recommend']:.2f}x recommend's speed (per round {s['speed_vs_recommend_per_round']})"
        )
    if "detection" in result:
        d = result["detection"]
        print(
            f"detection on one core: {d['photos_per_s_per_core']} photos/s at {d['stored_size']}, "
            f"{d['photos_per_s_per_core_800px']} photos/s at 800x800"
        )
    if "scoring" in result:
        s = result["scoring"]
        print(
            f"scoring, one onnxruntime session: {s['faces_per_s_1_thread']} faces/s on 1 thread, "
            f"{s['faces_per_s_default_threads']} with default threads"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
