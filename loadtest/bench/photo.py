"""Photos/s and faces/s with local detection vs server-side detection (the photo model), side by side.

    python -m face2hbe.loadtest.bench.photo --photos 100 --json docs/bench/photo.json

One embedded server (both models) serves every row, so the rows compare on one machine in
one run. Rows: `--detect local` (detection workers in the client, crops sent to the face
model) with each detector, and `--detect server` (photo bytes sent to face2hbe_photo), each
with 1 and 8 concurrent photo streams (photos in flight). The rows are run round-robin
`--repeats` times and medians kept, so a machine whose load changes hurts them alike.
Photos: LFW (250 px news photos) when ../shared/data is there, else the bundled samples repeated.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from face2hbe.net import free_port

from .common import DEFAULT_LFW, DEFAULT_REPOSITORY
from .e2e import photo_folder

STREAMS = (1, 8)


def _installed(detector: str) -> bool:
    from face2hbe.detection import load_detector

    try:
        load_detector(detector)
    except ImportError:
        return False
    return True


def _run(url: str, folder: Path, output: Path, detect: str, detector: str, streams: int, workers: int) -> dict:
    from face2hbe.client import Recommender
    from face2hbe.client.inference import ClientSettings
    from face2hbe.detection import DetectorSettings

    rec = Recommender(
        client=ClientSettings(url=url, max_in_flight=streams),
        detector=DetectorSettings(model=detector),
        workers=workers if detect == "local" else streams,
        detect=detect,
    )
    started = time.perf_counter()
    summary = rec.run([folder], output, progress=False)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "images": summary.images,
        "faces": summary.faces,
        "errors": sum(summary.errors.values()),
    }


def run_photo_bench(
    photos: int = 100,
    repository: Path = DEFAULT_REPOSITORY,
    detectors: tuple[str, ...] = ("hog", "blazeface"),
    workers: int = 1,
    repeats: int = 1,
    lfw_dir: Path = DEFAULT_LFW,
) -> dict:
    from face2hbe.detection import DetectorSettings
    from face2hbe.serving.embedded import EmbeddedServer, ServerSettings

    from .common import machine_info

    rows = [("local", d, s) for d in detectors if _installed(d) for s in STREAMS]
    rows += [("server", DetectorSettings().model, s) for s in STREAMS]  # the photo model runs the default detector
    settings = ServerSettings(Path(repository), http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    runs: dict[tuple, list[dict]] = {row: [] for row in rows}
    with EmbeddedServer(settings) as server, tempfile.TemporaryDirectory(prefix="face2hbe-photo-bench-") as tmp:
        url = f"127.0.0.1:{server.settings.grpc_port}"
        folder, source = photo_folder(Path(tmp) / "photos", photos, Path(lfw_dir))
        for i in range(repeats):
            for row in rows:
                runs[row].append(
                    _run(url, folder, Path(tmp) / f"out-{i}-{'-'.join(map(str, row))}.jsonl", *row, workers)
                )
    table = []
    for (detect, detector, streams), results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        table.append(
            {
                "detect": detect,
                "detector": detector,
                "streams": streams,
                "photos": results[0]["images"],
                "faces": results[0]["faces"],
                "errors": max(r["errors"] for r in results),
                "photos_per_s": round(results[0]["images"] / seconds, 2),
                "faces_per_s": round(results[0]["faces"] / seconds, 2),
                "seconds": [round(r["seconds"], 2) for r in results],
            }
        )
    return {
        "source": source,
        "photos": photos,
        "repeats": repeats,
        "client_workers": workers,
        "machine": machine_info(),
        "server_instances": {"face2hbe": "config.pbtxt", "face2hbe_photo": "config.pbtxt"},
        "rows": table,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def markdown(result: dict) -> str:
    lines = [
        "| detection | detector | streams | photos/s | faces/s | faces | errors |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['detect']} | {r['detector']} | {r['streams']} | {r['photos_per_s']:.2f} | {r['faces_per_s']:.2f} | {r['faces']} | {r['errors']} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m face2hbe.loadtest.bench.photo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--photos", type=int, default=100, help="Real photos per row (LFW; the samples without it).")
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument(
        "--detectors",
        default="hog,blazeface",
        help="Local detectors to compare (comma-separated; missing ones are skipped).",
    )
    parser.add_argument("--workers", type=int, default=1, help="Client detection worker processes for the local rows.")
    parser.add_argument("--repeats", type=int, default=1, help="Round-robin passes over the rows (medians kept).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures to this JSON file.")
    args = parser.parse_args(argv)
    result = run_photo_bench(args.photos, args.repository, tuple(args.detectors.split(",")), args.workers, args.repeats)
    print(
        f"{result['photos']} photos from {result['source']}, {result['repeats']} pass(es), {result['machine']['cpu']}"
    )
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps({**result, "table": markdown(result)}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
