"""The batch job's benchmark: `batch` on a local Ray vs `recommend`, 1 vs 2 CPU workers, and the sizing rates.

One run, one embedded Triton server (own free ports), the same photos for every row
(LFW through symlinks in a temporary folder, as loadtest/e2e_bench.py; the bundled
samples repeated without it):

- recommend: Recommender.run (detection worker processes + async gRPC), `--workers`;
- batch, cpu_workers=1 and 2: run_batch on a local Ray started once before both rows
  (its start-up is reported apart: a job pays it once, not per photo); each row writes a
  fresh output folder;
- sizing: detection photos/s on one core (prepare_image, the photos as they are and
  upscaled to the detector's 800 px working size) and scoring faces/s of one onnxruntime
  session on the repository's model (1 thread = per core, and the default threads).

    python -m face2hbe.loadtest.batch_bench --photos 500 --json docs/bench/batch.json
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from .e2e_bench import DEFAULT_LFW, DEFAULT_REPOSITORY, _free_port, photo_folder


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:
        return platform.processor() or "unknown"


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
    return {"photos": len(paths), "stored_size": list(size), "photos_per_s_per_core": rates["stored"],
            "photos_per_s_per_core_800px": rates["800px"], "crops": np.concatenate(crops) if crops else None}


def scoring_rates(crops: np.ndarray, repository: Path, seconds: float = 8.0) -> dict:
    """Faces/s of one onnxruntime session on the served model, batches of 32: 1 intra-op thread and the default."""
    import onnxruntime as ort

    from face2hbe import contract

    onnx_path = Path(repository) / contract.MODEL_NAME / contract.MODEL_VERSION / "model.onnx"
    batch = np.resize(crops, (32, *crops.shape[1:])).astype(np.uint8)
    rates = {}
    for threads in (1, None):
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
        session.run(None, {contract.INPUT_NAME: batch})
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            session.run(None, {contract.INPUT_NAME: batch})
            done += len(batch)
        rates["1_thread" if threads else "default_threads"] = round(done / (time.perf_counter() - started), 2)
    return {"faces_per_s_1_thread": rates["1_thread"], "faces_per_s_default_threads": rates["default_threads"], "batch": 32}


def run_batch_bench(photos: int = 500, repository: Path = DEFAULT_REPOSITORY, lfw_dir: Path = DEFAULT_LFW,
                    recommend_workers: int = 1, cpu_workers=(1, 2), in_flight: int = 4, sizing: bool = True) -> dict:
    import ray

    from face2hbe.client import Recommender
    from face2hbe.client.batch import BatchSettings, run_batch
    from face2hbe.client.inference import ClientSettings
    from face2hbe.serving.embedded import EmbeddedServer, ServerSettings

    load_before = os.getloadavg()
    result: dict = {"photos": photos, "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "rows": []}
    server = EmbeddedServer(ServerSettings(Path(repository), http_port=_free_port(), grpc_port=_free_port(), metrics_port=_free_port())).start()
    url = f"127.0.0.1:{server.settings.grpc_port}"
    try:
        with tempfile.TemporaryDirectory(prefix="face2hbe-batch-bench-") as tmp:
            folder, source = photo_folder(Path(tmp) / "photos", photos, Path(lfw_dir))
            result["source"] = source.replace(str(Path(lfw_dir).resolve()), os.path.relpath(Path(lfw_dir).resolve(), Path.cwd()))  # no absolute paths in committed JSON
            # recommend first: its worker processes fork, which must happen before Ray's threads exist.
            started = time.perf_counter()
            summary = Recommender(url=url, workers=recommend_workers, client=ClientSettings(url=url)).run(
                [folder], Path(tmp) / "recommend.jsonl", progress=False)
            seconds = time.perf_counter() - started
            result["rows"].append({"row": f"recommend, {recommend_workers} detection worker(s)", "seconds": round(seconds, 2),
                                   "images": summary.images, "faces": summary.faces, "photos_per_s": round(summary.images / seconds, 2),
                                   "faces_per_s": round(summary.faces / seconds, 2)})
            started = time.perf_counter()
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     _system_config={"automatic_object_spilling_enabled": False})
            result["ray_start_s"] = round(time.perf_counter() - started, 2)
            try:
                for workers in cpu_workers:
                    settings = BatchSettings(output=Path(tmp) / f"batch-{workers}", client=ClientSettings(url=url, max_in_flight=in_flight),
                                             cpu_workers=workers, progress=False)
                    started = time.perf_counter()
                    summary = run_batch([folder], settings)
                    seconds = time.perf_counter() - started
                    result["rows"].append({"row": f"batch (local Ray), {workers} CPU worker(s)", "seconds": round(seconds, 2),
                                           "images": summary.images, "faces": summary.faces, "photos_per_s": round(summary.images / seconds, 2),
                                           "faces_per_s": round(summary.faces / seconds, 2), "stages": summary.stages})
            finally:
                ray.shutdown()
            base = result["rows"][0]["photos_per_s"]
            for row in result["rows"]:
                row["vs_recommend"] = round(row["photos_per_s"] / base, 3) if base else None
            if sizing:
                lfw_paths = sorted(Path(folder).iterdir())
                rates = detection_rates(lfw_paths)
                crops = rates.pop("crops")
                result["detection"] = rates
                if crops is not None:
                    result["scoring"] = scoring_rates(crops, Path(repository))
    finally:
        server.stop()
    result["load_average_before"] = [round(x, 2) for x in load_before]
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m face2hbe.loadtest.batch_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=500, help="Real photos (LFW; the samples repeated without it).")
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="Model repository for the embedded server.")
    parser.add_argument("--recommend-workers", type=int, default=1, help="recommend's detection workers (its default on 2 cores).")
    parser.add_argument("--in-flight", type=int, default=4, help="Batches in flight per scoring actor.")
    parser.add_argument("--no-sizing", action="store_true", help="Leave out the per-core detection and per-instance scoring rates.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures to this JSON file.")
    args = parser.parse_args(argv)
    result = run_batch_bench(photos=args.photos, repository=args.repository, recommend_workers=args.recommend_workers,
                             in_flight=args.in_flight, sizing=not args.no_sizing)
    print(f"{result['photos']} photos ({result['source']}); {result['cpu_model']}, {result['cpu_count']} CPUs; "
          f"load average before/after {result['load_average_before']} / {result['load_average_after']}")
    print(f"{'row':42} {'s':>7} {'photos/s':>9} {'faces/s':>8} {'vs recommend':>13}")
    for row in result["rows"]:
        print(f"{row['row']:42} {row['seconds']:7.1f} {row['photos_per_s']:9.2f} {row['faces_per_s']:8.2f} {row['vs_recommend']:12.2f}x")
    print(f"local Ray start-up (once per job, not in the rows): {result['ray_start_s']} s")
    if "detection" in result:
        d = result["detection"]
        print(f"detection on one core: {d['photos_per_s_per_core']} photos/s at {d['stored_size']}, {d['photos_per_s_per_core_800px']} photos/s at 800x800")
    if "scoring" in result:
        s = result["scoring"]
        print(f"scoring, one onnxruntime session: {s['faces_per_s_1_thread']} faces/s on 1 thread, {s['faces_per_s_default_threads']} with default threads")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
