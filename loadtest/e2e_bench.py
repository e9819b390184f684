"""End-to-end faces/s (photos -> detection -> crops -> server -> SKUs) vs model-only faces/s.

Both figures come from the same server in one run:

- model-only: the very face crops the end-to-end run scored (re-cut from its
  records' boxes, before the clock starts), sent as the same per-photo
  requests through AsyncScorer with the same in-flight bound;
- end-to-end: Recommender.run over a folder of real photos (LFW, by symlinks
  in a temporary folder; the bundled sample photos when LFW is absent),
  detection threads included, from start to last record.

The ratio end-to-end / model-only says how much of the server's capacity the
client delivers. Phases alternate `repeats` times; medians are reported.

    python -m face2hbe.loadtest.e2e_bench --photos 200
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from face2hbe.net import free_port
from face2hbe.paths import portable

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPOSITORY = ROOT / "model_repository"
DEFAULT_LFW = Path(os.environ.get("FACE2HBE_SHARED_DATA", ROOT.parent / "shared" / "data")) / "lfw"
SAMPLES = ROOT / "client" / "samples"




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


def _crops_by_image(output: Path) -> list[np.ndarray]:
    """The crops the end-to-end run scored, one array per photo with faces (memory only)."""
    from face2hbe.detection import face_crops
    from face2hbe.imaging import Box, load_rgb

    groups = []
    for line in output.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("faces"):
            groups.append(face_crops(load_rgb(record["path"]), [Box(*f["box"]) for f in record["faces"]]))
    return groups


async def _model_only(settings, groups: list[np.ndarray]) -> float:
    """Seconds to score every group as one request each, at most settings.max_in_flight at once."""
    from face2hbe.client.inference import AsyncScorer

    async with AsyncScorer(settings) as scorer:
        await scorer.score(groups[0])  # connection and first-request set-up are not the server's speed
        started = time.perf_counter()
        await asyncio.gather(*(scorer.score(g) for g in groups))
        return time.perf_counter() - started


def _end_to_end(url: str, settings, folder: Path, output: Path, workers: int, detector) -> dict:
    from face2hbe.client import Recommender

    stamps: list[float] = []
    started = time.perf_counter()
    summary = Recommender(detector=detector, workers=workers, client=settings).run(
        [folder], output, progress=False, on_result=lambda r: stamps.append(time.perf_counter())
    )
    total = time.perf_counter() - started
    return {"seconds": total, "faces": summary.faces, "images": summary.images, "errors": sum(summary.errors.values()),
            "first_result_s": (stamps[0] - started) if stamps else None}


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
) -> dict:
    """Measure end-to-end and model-only faces/s on one server; returns the figures as a dict.

    With `url` the server there is used (threads/instances then do not apply);
    otherwise an embedded server on free loopback ports serves `repository`.
    """
    from face2hbe.client.inference import ClientSettings
    from face2hbe.client.recommend import default_workers
    from face2hbe.detection import DetectorSettings

    load_before = os.getloadavg()
    server = None
    if url is None:
        from face2hbe.serving.embedded import EmbeddedServer, ServerSettings

        server = EmbeddedServer(ServerSettings(
            Path(repository), http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
            threads_per_instance=threads, instance_count=instances,
        )).start()
        url = f"127.0.0.1:{server.settings.grpc_port}"
    given = lambda **values: {k: v for k, v in values.items() if v is not None}  # noqa: E731
    settings = ClientSettings(url=url, protocol="grpc", **given(max_in_flight=in_flight))
    detector = DetectorSettings(**given(max_side=max_side, upsample=upsample, retry_upsample=retry_upsample))
    try:
        with tempfile.TemporaryDirectory(prefix="face2hbe-e2e-") as tmp:
            folder, source = photo_folder(Path(tmp) / "photos", photos, Path(lfw_dir))
            e2e_runs, model_runs, groups = [], [], None
            for i in range(repeats):
                output = Path(tmp) / f"results-{i}.jsonl"
                e2e_runs.append(_end_to_end(url, settings, folder, output, workers, detector))
                if groups is None:
                    groups = _crops_by_image(output)
                if not groups:
                    raise RuntimeError(f"no faces found in the {photos} photos from {source}")
                model_runs.append(asyncio.run(_model_only(settings, groups)))
    finally:
        if server is not None:
            server.stop()
    faces = sum(len(g) for g in groups)
    e2e_s = statistics.median(r["seconds"] for r in e2e_runs)
    model_s = statistics.median(model_runs)
    first = [r["first_result_s"] for r in e2e_runs if r["first_result_s"] is not None]
    e2e_fps, model_fps = e2e_runs[0]["faces"] / e2e_s, faces / model_s
    return {
        "photos": photos,
        "source": source,
        "faces": faces,
        "requests": len(groups),
        "errors": max(r["errors"] for r in e2e_runs),
        "model_only_faces_per_s": round(model_fps, 2),
        "e2e_faces_per_s": round(e2e_fps, 2),
        "ratio": round(e2e_fps / model_fps, 3),
        "model_only_seconds": [round(s, 2) for s in model_runs],
        "e2e_seconds": [round(r["seconds"], 2) for r in e2e_runs],
        "e2e_first_result_s": round(statistics.median(first), 2) if first else None,
        "settings": {"workers": workers or default_workers(), "threads": threads, "instances": instances, "in_flight": settings.max_in_flight,
                     "max_side": detector.max_side, "upsample": detector.upsample, "retry_upsample": detector.retry_upsample, "repeats": repeats, "own_server": server is not None},
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv=None) -> int:
    from face2hbe.client.inference import ClientSettings
    from face2hbe.detection import DetectorSettings

    client, detector = ClientSettings(), DetectorSettings()
    parser = argparse.ArgumentParser(prog="python -m face2hbe.loadtest.e2e_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=200, help="Real photos to process (LFW; samples without it).")
    parser.add_argument("--url", default=None, help="Use the gRPC server at host:port instead of starting one.")
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="Model repository for the embedded server.")
    parser.add_argument("--workers", type=int, default=None, help="Detection threads (default: the client's, the CPUs this process may use).")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads on the embedded server.")
    parser.add_argument("--instances", type=int, default=None, help="Model instances on the embedded server.")
    parser.add_argument("--in-flight", type=int, default=client.max_in_flight, help="Most inference requests in flight (both phases).")
    parser.add_argument("--max-side", type=int, default=detector.max_side, help="Detection copy's largest side.")
    parser.add_argument("--upsample", type=int, default=detector.upsample, help="Detector up-sampling steps.")
    parser.add_argument("--retry-upsample", type=int, default=detector.retry_upsample, help="Up-sampling steps for a second look when none found.")
    parser.add_argument("--repeats", type=int, default=1, help="Alternate the two phases this many times (medians).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures to this JSON file.")
    args = parser.parse_args(argv)
    result = run_e2e_bench(photos=args.photos, url=args.url, repository=args.repository, workers=args.workers,
                           threads=args.threads, instances=args.instances, in_flight=args.in_flight,
                           max_side=args.max_side, upsample=args.upsample, retry_upsample=args.retry_upsample, repeats=args.repeats)
    print(f"{result['faces']} faces in {result['photos']} photos ({result['source']})")
    print(f"model-only  {result['model_only_faces_per_s']:8.2f} faces/s")
    print(f"end-to-end  {result['e2e_faces_per_s']:8.2f} faces/s  ({result['ratio']:.0%} of model-only)")
    print(f"load average before/after: {result['load_average_before']} / {result['load_average_after']} on {result['cpu_count']} CPUs")
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
