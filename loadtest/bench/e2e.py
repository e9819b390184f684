"""End-to-end faces/s (photos -> detection -> crops -> server -> SKUs) vs model-only faces/s.

Both figures come from the same server in one run:

- model-only: the very face crops the end-to-end run scored (re-cut from its
  records' boxes, before the clock starts), sent as the same per-photo
  requests through AsyncScorer with the same in-flight bound;
- end-to-end: Recommender.run over a folder of real photos, detection threads
  included, from start to last record. `--set lfw` (default): LFW's 250x250
  photos by symlinks in a temporary folder (the bundled samples when LFW is
  absent); `--set phone` / `--set large`: 4032x3024 / 6000x4000 JPEG collages
  of LFW photos, several faces each, built at run time into that temporary
  folder (loadtest/bench/phone_photos.py, in a child process). `--detect server`
  sends the photos to the photo model instead (decoding and detection on the
  server); `--full-decode` decodes every photo at full resolution (before
  issue #25), on the client and, with --detect server, in the photo model.

The ratio end-to-end / model-only says how much of the server's capacity the
client delivers. Phases alternate `repeats` times; medians are reported. Peak
memory: the resident set (RSS) of the client (this process, detection threads
included) and of the server (`face2hbe serve` started here: its process tree,
tritonserver and the backend stubs), sampled every 0.1 s in each phase.

    python -m face2hbe.loadtest.bench.e2e --photos 200
    python -m face2hbe.loadtest.bench.e2e --set phone --photos 40
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from face2hbe.paths import portable

from .common import DEFAULT_LFW, DEFAULT_REPOSITORY, SAMPLES

PHOTO_SETS = ("lfw", "phone", "large")  # phone, large: loadtest.bench.phone_photos.SIZES
MB = 1024 * 1024


def photo_folder(target: Path, count: int, lfw_dir: Path = DEFAULT_LFW) -> tuple[Path, str]:
    """`target` filled with `count` symlinks to real photos; returns it and the source's name.

    LFW photos in labels.csv order (one folder per person, so many people);
    without LFW, the bundled sample photos repeated under distinct names.
    """
    target.mkdir(parents=True, exist_ok=True)
    labels = lfw_dir / "labels.csv"
    if labels.is_file():
        with labels.open(newline="") as f:
            paths = [lfw_dir / row["path"] for _, row in zip(range(count), csv.DictReader(f))]
        source = f"LFW ({portable(lfw_dir)})"
    else:
        samples = sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        paths = [samples[i % len(samples)] for i in range(count)]
        source = f"bundled samples ({portable(SAMPLES)}), repeated"
    for i, path in enumerate(paths):
        (target / f"{i:05d}_{path.name}").symlink_to(path.resolve())
    return target, source


def phone_folder(target: Path, count: int, photo_set: str, lfw_dir: Path = DEFAULT_LFW) -> tuple[Path, str]:
    """`target` filled with `count` phone-size collages of LFW photos (built by a child process); returns it and the source's name."""
    from .phone_photos import SIZES

    if not (lfw_dir / "labels.csv").is_file():
        raise FileNotFoundError(f"--set {photo_set} builds its photos from LFW, which is not at {portable(lfw_dir)}")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "face2hbe.loadtest.bench.phone_photos",
            str(target),
            "--lfw",
            str(lfw_dir),
            "--count",
            str(count),
            "--size",
            photo_set,
        ],
        check=True,
    )
    width, height = SIZES[photo_set]
    return target, f"{width}x{height} JPEG collages of LFW photos ({portable(lfw_dir)}; loadtest/bench/phone_photos.py)"


def _crops_by_image(output: Path, detector) -> list[np.ndarray]:
    """The crops the end-to-end run scored, one array per photo with faces (memory only): the photo decoded as
    the run decoded it (detection.decode_for_detection with its settings), cut at the records' boxes."""
    from face2hbe.detection import decode_for_detection, face_crops
    from face2hbe.imaging import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS, Box, read_image_file

    groups = []
    for line in output.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("faces"):
            photo = decode_for_detection(
                read_image_file(record["path"]), record["path"], detector, DEFAULT_MAX_PIXELS, DEFAULT_MAX_FILE_BYTES
            )
            groups.append(face_crops(photo, [Box(*f["box"]) for f in record["faces"]]))
    return groups


def tree_rss(pid: int, skip: int | None = None) -> int:
    """Resident bytes of process `pid` and its descendants (each process's RSS, summed), without `skip`'s tree."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
        skipped = set()
        if skip is not None:
            skipped = {skip, *(p.pid for p in psutil.Process(skip).children(recursive=True))}
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in processes:
        if process.pid not in skipped:
            try:
                total += process.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
    return total


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by process `pid` and its living descendants."""
    import psutil

    total = 0.0
    try:
        processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return total
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def process_peaks(pid: int) -> dict[int, tuple[str, float, float]]:
    """pid -> (name, resident MB, peak resident MB since it started: Linux VmHWM) for `pid` and its descendants.

    A Triton backend stub is named after its model (its first argument is the model's file in the repository)."""
    import psutil

    peaks = {}
    try:
        processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return peaks
    for process in processes:
        try:
            command = process.cmdline()
            name = (
                Path(command[1]).parent.parent.name
                if command and command[0].endswith("_stub") and len(command) > 1
                else process.name()
            )
            with open(f"/proc/{process.pid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
            peaks[process.pid] = (name, int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024)
        except (psutil.Error, OSError, KeyError, ValueError):  # gone, or not Linux
            continue
    return peaks


class PeakRss:
    """Peak resident memory (MB) of named probes (callables giving bytes), sampled every `period` s in a thread."""

    def __init__(self, probes: dict, period: float = 0.1):
        self.probes, self.period = probes, period
        self.peak_mb = {name: 0.0 for name in probes}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="peak-rss")

    def sample(self) -> None:
        for name, probe in self.probes.items():
            self.peak_mb[name] = max(self.peak_mb[name], probe() / MB)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def __enter__(self) -> "PeakRss":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def _full_decode_repository(repository: Path, target: Path) -> Path:
    """A repository of links to `repository`'s models, whose photo model decodes at full resolution (draft_decode false)."""
    from face2hbe import contract
    from face2hbe.photo import PARAM_DRAFT_DECODE

    target.mkdir()
    for model in repository.iterdir():
        if model.name == contract.PHOTO_MODEL_NAME:
            shutil.copytree(model, target / model.name)
            with (target / model.name / "config.pbtxt").open("a") as config:
                config.write(f'parameters {{\n  key: "{PARAM_DRAFT_DECODE}"\n  value {{ string_value: "false" }}\n}}\n')
        else:
            (target / model.name).symlink_to(model.resolve())
    return target


async def _model_only(settings, groups: list[np.ndarray]) -> float:
    """Seconds to score every group as one request each, at most settings.max_in_flight at once."""
    from face2hbe.client.inference import AsyncScorer

    async with AsyncScorer(settings) as scorer:
        await scorer.score(groups[0])  # connection and first-request set-up are not the server's speed
        started = time.perf_counter()
        await asyncio.gather(*(scorer.score(g) for g in groups))
        return time.perf_counter() - started


def _end_to_end(url: str, settings, folder: Path, output: Path, workers: int, detector, detect: str = "local") -> dict:
    from face2hbe.client import Recommender

    stamps: list[float] = []
    cpu, started = _client_cpu_s(), time.perf_counter()
    summary = Recommender(detector=detector, workers=workers, client=settings, detect=detect).run(
        [folder], output, progress=False, on_result=lambda r: stamps.append(time.perf_counter())
    )
    total = time.perf_counter() - started
    return {
        "seconds": total,
        "faces": summary.faces,
        "images": summary.images,
        "errors": sum(summary.errors.values()),
        "first_result_s": (stamps[0] - started) if stamps else None,
        "client_cpu_s": _client_cpu_s() - cpu,
    }


def _client_cpu_s() -> float:
    """CPU seconds of this process and of its children that have ended (a client's worker processes, if any)."""
    import resource

    return sum(
        u.ru_utime + u.ru_stime
        for u in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


def run_e2e_bench(
    photos: int = 200,
    url: str | None = None,
    repository: str | Path = DEFAULT_REPOSITORY,
    workers: int | None = None,  # detection threads; None: the client's default (the CPUs this process may use)
    threads: int | None = None,
    instances: int | None = None,
    in_flight: int | None = None,  # None: the client's own defaults (ClientSettings, DetectorSettings)
    max_side: int | None = None,
    upsample: int | None = None,
    retry_upsample: int | None = None,
    repeats: int = 1,
    lfw_dir: str | Path = DEFAULT_LFW,
    photo_set: str = "lfw",
    detect: str = "local",
    full_decode: bool = False,
) -> dict:
    """Measure end-to-end and model-only faces/s on one server, and both sides' peak memory; returns the figures as a dict.

    With `url` the server there is used (threads/instances then do not apply, and its memory is not measured);
    otherwise `face2hbe serve` on free loopback ports, in a child process, serves `repository`.
    """
    from face2hbe.client.inference import ClientSettings
    from face2hbe.client.recommend import default_workers
    from face2hbe.detection import DetectorSettings
    from face2hbe.serving.process import ServerProcess

    if photo_set not in PHOTO_SETS:
        raise ValueError(f"photo_set must be one of {', '.join(PHOTO_SETS)}, not {photo_set!r}")
    load_before = os.getloadavg()
    server_processes = []
    given = lambda **values: {k: v for k, v in values.items() if v is not None}  # noqa: E731
    detector = DetectorSettings(
        **given(max_side=max_side, upsample=upsample, retry_upsample=retry_upsample), draft=not full_decode
    )
    with tempfile.TemporaryDirectory(prefix="face2hbe-e2e-") as tmp:
        server = None
        if url is None:
            served = Path(repository)
            if full_decode and detect == "server":
                served = _full_decode_repository(served, Path(tmp) / "repository")
            args = [
                *(["--threads", str(threads)] if threads else []),
                *(["--instances", str(instances)] if instances else []),
            ]
            server = ServerProcess(served, Path(tmp) / "server.log", args=args).start()
        try:
            if server is not None:
                server.wait_ready()
                url = server.grpc_url
            settings = ClientSettings(url=url, protocol="grpc", **given(max_in_flight=in_flight))
            if photo_set == "lfw":
                folder, source = photo_folder(Path(tmp) / "photos", photos, Path(lfw_dir))
            else:
                folder, source = phone_folder(Path(tmp) / "photos", photos, photo_set, Path(lfw_dir))
            probes = {"client": lambda: tree_rss(os.getpid(), skip=server.proc.pid if server else None)}
            if server is not None:
                probes["server"] = lambda: tree_rss(server.proc.pid)
            idle = {name: round(probe() / MB, 1) for name, probe in probes.items()}
            idle_processes = process_peaks(server.proc.pid) if server is not None else {}
            e2e_runs, model_runs, groups, peaks = [], [], None, {"e2e": [], "model_only": []}
            server_cpu = (lambda: tree_cpu_s(server.proc.pid)) if server is not None else (lambda: 0.0)
            cpu = {"e2e": [], "model_only": []}  # (client, server) CPU seconds of each phase
            for i in range(repeats):
                output = Path(tmp) / f"results-{i}.jsonl"
                before = (_client_cpu_s(), server_cpu())
                with PeakRss(probes) as rss:
                    e2e_runs.append(_end_to_end(url, settings, folder, output, workers, detector, detect))
                cpu["e2e"].append((_client_cpu_s() - before[0], server_cpu() - before[1]))
                peaks["e2e"].append(rss.peak_mb)
                if groups is None:
                    groups = _crops_by_image(output, detector)
                if not groups:
                    raise RuntimeError(f"no faces found in the {photos} photos from {source}")
                before = (_client_cpu_s(), server_cpu())
                with PeakRss(probes) as rss:
                    model_runs.append(asyncio.run(_model_only(settings, groups)))
                cpu["model_only"].append((_client_cpu_s() - before[0], server_cpu() - before[1]))
                peaks["model_only"].append(rss.peak_mb)
            after = {name: round(probe() / MB, 1) for name, probe in probes.items()}
            if (
                server is not None
            ):  # each server process: resident at idle, its peak (the most one photo-model instance needed)
                peaks_now = process_peaks(server.proc.pid)
                server_processes = [
                    {"name": name, "idle_mb": round(idle_processes[pid][1], 1), "peak_mb": round(hwm, 1)}
                    for pid, (name, _, hwm) in peaks_now.items()
                    if pid in idle_processes
                ]
        finally:
            if server is not None:
                server.stop()
    faces = sum(len(g) for g in groups)
    # CPU per face in each phase (client: this process; server: face2hbe serve's processes, when started here).
    # On a machine whose cores both phases keep busy, faces/s go as 1 / (CPU per face): the ratio of the two
    # totals is the end-to-end / model-only ratio that machine reaches when idle, whatever else ran meanwhile.
    e2e_faces = e2e_runs[0]["faces"] or 1
    cpu_ms = {
        phase: {
            side: round(1000 * statistics.median(run[k] for run in runs) / (e2e_faces if phase == "e2e" else faces), 2)
            for k, side in enumerate(("client", "server"))
        }
        for phase, runs in cpu.items()
    }
    memory = {
        name: {
            "idle_mb": idle[name],
            "after_mb": after[name],
            **{f"{phase}_peak_mb": round(max(p[name] for p in runs), 1) for phase, runs in peaks.items()},
        }
        for name in probes
    }
    e2e_s = statistics.median(r["seconds"] for r in e2e_runs)
    model_s = statistics.median(model_runs)
    first = [r["first_result_s"] for r in e2e_runs if r["first_result_s"] is not None]
    e2e_fps, model_fps = e2e_runs[0]["faces"] / e2e_s, faces / model_s
    return {
        "photos": photos,
        "photo_set": photo_set,
        "source": source,
        "detect": detect,
        "decode": "full" if full_decode else "draft",
        "faces": faces,
        "requests": len(groups),
        "errors": max(r["errors"] for r in e2e_runs),
        "model_only_faces_per_s": round(model_fps, 2),
        "e2e_faces_per_s": round(e2e_fps, 2),
        "e2e_photos_per_s": round(e2e_runs[0]["images"] / e2e_s, 2),
        "ratio": round(e2e_fps / model_fps, 3),
        "model_only_seconds": [round(s, 2) for s in model_runs],
        "e2e_seconds": [round(r["seconds"], 2) for r in e2e_runs],
        "e2e_first_result_s": round(statistics.median(first), 2) if first else None,
        "memory": memory,  # MB: resident set at idle, its peaks in each phase, after the last phase
        "cpu_ms_per_face": cpu_ms,
        "cpu_bound_ratio": round(sum(cpu_ms["model_only"].values()) / sum(cpu_ms["e2e"].values()), 3)
        if server is not None
        else None,
        "server_processes": server_processes,  # face2hbe serve started here: each process, its idle and peak MB
        # the client's CPU per photo end to end (detection, requests, records): what it takes from a machine it shares
        "e2e_client_cpu_ms_per_photo": round(
            1000 * statistics.median(r["client_cpu_s"] / max(r["images"], 1) for r in e2e_runs), 2
        ),
        "settings": {
            "workers": workers or default_workers(),
            "threads": threads,
            "instances": instances,
            "in_flight": settings.max_in_flight,
            "max_side": detector.max_side,
            "upsample": detector.upsample,
            "retry_upsample": detector.retry_upsample,
            "repeats": repeats,
            "own_server": server is not None,
        },
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv=None) -> int:
    from face2hbe.client.inference import ClientSettings
    from face2hbe.detection import DetectorSettings

    client, detector = ClientSettings(), DetectorSettings()
    parser = argparse.ArgumentParser(prog="python -m face2hbe.loadtest.bench.e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=200, help="Real photos to process (LFW; samples without it).")
    parser.add_argument("--url", default=None, help="Use the gRPC server at host:port instead of starting one.")
    parser.add_argument(
        "--repository", type=Path, default=DEFAULT_REPOSITORY, help="Model repository for the embedded server."
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Detection threads (default: the client's, the CPUs this process may use).",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="onnxruntime intra-op threads on the embedded server."
    )
    parser.add_argument("--instances", type=int, default=None, help="Model instances on the embedded server.")
    parser.add_argument(
        "--in-flight", type=int, default=client.max_in_flight, help="Most inference requests in flight (both phases)."
    )
    parser.add_argument("--max-side", type=int, default=detector.max_side, help="Detection copy's largest side.")
    parser.add_argument("--upsample", type=int, default=detector.upsample, help="Detector up-sampling steps.")
    parser.add_argument(
        "--retry-upsample",
        type=int,
        default=detector.retry_upsample,
        help="Up-sampling steps for a second look when none found.",
    )
    parser.add_argument("--repeats", type=int, default=1, help="Alternate the two phases this many times (medians).")
    parser.add_argument(
        "--set",
        dest="photo_set",
        choices=PHOTO_SETS,
        default="lfw",
        help="lfw: LFW's 250x250 photos; phone / large: 4032x3024 / 6000x4000 collages of them, built at run time.",
    )
    parser.add_argument(
        "--detect",
        choices=("local", "server"),
        default="local",
        help="End to end with local detection (crops to face2hbe) or the photo model (photos to face2hbe_photo).",
    )
    parser.add_argument(
        "--full-decode", action="store_true", help="Decode every photo at full resolution (the path before issue #25)."
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures to this JSON file.")
    args = parser.parse_args(argv)
    result = run_e2e_bench(
        photos=args.photos,
        url=args.url,
        repository=args.repository,
        workers=args.workers,
        threads=args.threads,
        instances=args.instances,
        in_flight=args.in_flight,
        max_side=args.max_side,
        upsample=args.upsample,
        retry_upsample=args.retry_upsample,
        repeats=args.repeats,
        photo_set=args.photo_set,
        detect=args.detect,
        full_decode=args.full_decode,
    )
    print(
        f"{result['faces']} faces in {result['photos']} photos ({result['source']}), detection {result['detect']}, "
        f"{result['decode']} decode"
    )
    print(f"model-only  {result['model_only_faces_per_s']:8.2f} faces/s")
    print(
        f"end-to-end  {result['e2e_faces_per_s']:8.2f} faces/s  {result['e2e_photos_per_s']:.2f} photos/s  "
        f"({result['ratio']:.0%} of model-only)"
    )
    if result["cpu_bound_ratio"] is not None:
        per_face = {
            phase: " + ".join(f"{ms:.1f}" for ms in sides.values())
            for phase, sides in result["cpu_ms_per_face"].items()
        }
        print(
            f"CPU ms per face (client + server): end to end {per_face['e2e']}, model-only {per_face['model_only']}"
            f"  -> {result['cpu_bound_ratio']:.0%} on an idle machine whose cores both phases keep busy"
        )
    for name, memory in result["memory"].items():
        print(
            f"{name} RSS  idle {memory['idle_mb']:.0f} MB, peak {memory['e2e_peak_mb']:.0f} MB end to end, "
            f"{memory['model_only_peak_mb']:.0f} MB model-only, {memory['after_mb']:.0f} MB after"
        )
    print(
        f"load average before/after: {result['load_average_before']} / {result['load_average_after']} on {result['cpu_count']} CPUs"
    )
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
