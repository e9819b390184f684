"""The reduced JPEG decode (issue #25) against the full decode, per photo: time, peak memory and score agreement.

    python -m face2hbe.loadtest.bench.decode --photos 12 --json docs/bench/decode.json

For each photo set (`--sets`: phone = 4032x3024, large = 6000x4000 collages of LFW photos,
loadtest/bench/phone_photos.py, written to a temporary folder) and each variant of the client's
decode + detect + crop:

- `before`: the code before issue #25, replicated here: imaging.decode_rgb as it was (EXIF turn and
  RGB conversion each a whole-photo copy, then an array), detection and crops on that array;
- `full`: DetectorSettings(draft=False), today's full-resolution decode (`e2e_bench --full-decode`):
  the same pixels, boxes and crops as `before`, without the copies;
- `draft`: the default, the JPEG decoded at 1/2, 1/4 or 1/8 (DCT scaling) to the detection size,
  faces too small there cut from one finer decode;

- CPU seconds per photo of decode + detect (BlazeFace, the client's defaults) + crop, one thread
  in this process (time.process_time: what the work costs, little moved by other load on a shared
  machine; wall seconds too), the variants interleaved photo by photo (before, full, draft, before,
  ...) so a machine whose load changes hurts them alike;
- peak memory per photo: a child process per variant loads the detector, warms up on one LFW
  photo, then takes the set's photos one at a time; its peak resident set (Linux VmHWM) minus its
  resident set before the first one is what one photo needs at most (what a detection thread of
  the client, or a photo-model instance of the server, adds while it works on a photo);
- agreement: on the full decode's boxes, the draft crops' scores against the full crops' scores
  (the served weights: fp32 and INT8, onnxruntime, every label), beside what moving every box
  by one pixel does to the full crops' scores (the model's own sensitivity); and whether the draft
  path finds the same faces (a face counts as found again at IoU >= 0.7).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from face2hbe.paths import portable

from .common import DEFAULT_LFW, DEFAULT_REPOSITORY

VARIANTS = ("before", "full", "draft")


def decode_before(data: bytes) -> np.ndarray:
    """imaging.decode_rgb as it was before issue #25 (for an RGB, L or CMYK JPEG): EXIF turn, RGB conversion, array."""
    import io

    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        im.seek(0)
        return np.ascontiguousarray(np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.uint8))


def process_photo(data: bytes, variant: str, name: str = "photo"):
    """(decoded photo, boxes, crops): the client's path for one photo (decode, detect, keep 20, crop)."""
    from face2hbe.detection import DEFAULT_MAX_FACES, DetectorSettings, decode_for_detection, detect_faces, face_crops
    from face2hbe.imaging import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS

    settings = DetectorSettings(draft=variant == "draft")
    if variant == "before":
        photo = decode_before(data)
    else:
        photo = decode_for_detection(data, name, settings, DEFAULT_MAX_PIXELS, DEFAULT_MAX_FILE_BYTES)
    boxes = detect_faces(photo, settings)[:DEFAULT_MAX_FACES]
    return photo, boxes, face_crops(photo, boxes)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _peak_child(variant: str, folder: Path, lfw_dir: Path) -> None:
    """In a child process: print the resident MB when warm and at the peak while it takes `folder`'s photos one by one."""
    from face2hbe.detection import load_detector
    from face2hbe.imaging import read_image_file

    from .phone_photos import lfw_photos

    load_detector("blazeface")
    process_photo(lfw_photos(lfw_dir, 1)[0].read_bytes(), variant)  # warm: detector, first inference, libjpeg
    before_kb = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # the high-water mark starts again from here (Linux 4.0+)
        f.write("5")
    for path in sorted(folder.iterdir()):
        process_photo(read_image_file(path), variant, path.name)
    print(json.dumps({"before_mb": before_kb / 1024, "peak_mb": _status_kb("VmHWM") / 1024}))


def peak_per_photo(variant: str, folder: Path, lfw_dir: Path) -> dict:
    """Resident MB before the photos in `folder` and at their peak, measured in a fresh child process."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "face2hbe.loadtest.bench.decode",
            "--peak-child",
            variant,
            "--folder",
            str(folder),
            "--lfw",
            str(lfw_dir),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    return {
        "before_mb": round(figures["before_mb"], 1),
        "peak_mb": round(figures["peak_mb"], 1),
        "peak_per_photo_mb": round(figures["peak_mb"] - figures["before_mb"], 1),
    }


def _iou(a, b) -> float:
    inter = max(0, min(a.right, b.right) - max(a.left, b.left)) * max(0, min(a.bottom, b.bottom) - max(a.top, b.top))
    return inter / (a.width * a.height + b.width * b.height - inter)


def run_decode_bench(
    photos: int = 12,
    sets: tuple[str, ...] = ("phone", "large"),
    repository: Path = DEFAULT_REPOSITORY,
    lfw_dir: Path = DEFAULT_LFW,
) -> dict:
    from face2hbe import contract
    from face2hbe.detection import load_detector
    from face2hbe.graphs import cpu_session

    from .common import machine_info

    sessions = {
        precision: cpu_session(Path(repository) / model / contract.MODEL_VERSION / "model.onnx", spin=True)
        for precision, model in (("fp32", contract.MODEL_NAME), ("int8", contract.INT8_MODEL_NAME))
    }
    load_detector("blazeface")
    with tempfile.TemporaryDirectory(prefix="face2hbe-decode-") as tmp:  # the collages (LFW is not ours to keep)
        rows = [_set_row(size, photos, Path(tmp), sessions, lfw_dir) for size in sets]
    return {
        "lfw": portable(lfw_dir),
        "machine": machine_info(),
        "rows": rows,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def _set_row(size: str, photos: int, tmp: Path, sessions: dict, lfw_dir: Path) -> dict:
    from face2hbe import contract
    from face2hbe.detection import face_crops
    from face2hbe.graphs import score_crops
    from face2hbe.imaging import MIN_CROP_SIDE, Box, crop_box

    from .phone_photos import SIZES, write_phone_photos

    def scores(precision: str, crops: np.ndarray) -> np.ndarray:  # all of a photo's crops in one run
        return score_crops(
            sessions[precision], crops, (contract.OUTPUT_NAME, contract.ATTRIBUTES_NAME), max(1, len(crops))
        )

    seconds = {variant: [] for variant in VARIANTS}
    cpu = {variant: [] for variant in VARIANTS}
    diffs = {(precision, what): [] for precision in sessions for what in ("draft", "box moved 1 px")}
    found, found_again, second_looks = 0, 0, 0
    folder = write_phone_photos(tmp / size, lfw_dir, photos, SIZES[size])
    for path in sorted(folder.iterdir()):
        data, results = path.read_bytes(), {}
        for variant in VARIANTS:
            started, cpu_started = time.perf_counter(), time.process_time()
            results[variant] = process_photo(data, variant, path.name)
            seconds[variant].append(time.perf_counter() - started)
            cpu[variant].append(time.process_time() - cpu_started)
        (full, boxes, full_crops), (draft, draft_boxes, _) = results["full"], results["draft"]
        before_boxes, before_crops = results["before"][1:]
        if before_boxes != boxes or not np.array_equal(before_crops, full_crops):
            raise AssertionError(f"{path.name}: the full decode's boxes or crops differ from the code before issue #25")
        found += len(boxes)
        found_again += sum(max((_iou(b, d) for d in draft_boxes), default=0) >= 0.7 for b in boxes)
        second_looks += sum(
            draft.scale > 1 and crop_box(b, full.height, full.width)[2] < MIN_CROP_SIDE * draft.scale for b in boxes
        )
        if not boxes:
            continue
        moved = face_crops(full, [Box(b.top + 1, b.right + 1, b.bottom + 1, b.left + 1) for b in boxes])
        draft_crops = face_crops(draft, boxes)
        for precision in sessions:
            want = scores(precision, full_crops)
            diffs[(precision, "draft")].append(np.abs(scores(precision, draft_crops) - want))
            diffs[(precision, "box moved 1 px")].append(np.abs(scores(precision, moved) - want))
    memory = {variant: peak_per_photo(variant, folder, lfw_dir) for variant in VARIANTS}
    agreement = []
    for (precision, what), parts in diffs.items():
        d = np.concatenate(parts)
        agreement.append(
            {
                "model": precision,
                "compared": what,
                "scores": int(d.size),
                "max": round(float(d.max()), 4),
                "p99": round(float(np.quantile(d, 0.99)), 4),
                "mean": round(float(d.mean()), 5),
            }
        )
    width, height = SIZES[size]
    return {
        "set": size,
        "size": f"{width}x{height}",
        "photos": photos,
        "faces": found,
        "faces_found_again": found_again,
        "faces_cut_from_a_finer_decode": int(second_looks),
        "cpu_seconds_per_photo": {v: round(statistics.mean(s), 3) for v, s in cpu.items()},
        "seconds_per_photo": {v: round(statistics.mean(s), 3) for v, s in seconds.items()},
        "speed_vs_before": {v: round(statistics.mean(cpu["before"]) / statistics.mean(s), 2) for v, s in cpu.items()},
        "memory": memory,
        "agreement": agreement,
    }


def markdown(result: dict) -> str:
    lines = [
        "| photos | decode | CPU s per photo | wall s per photo | speed vs before (CPU) | peak MB per photo | faces found | "
        "of them found again | cut from a finer decode |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        for variant in VARIANTS:
            draft = variant == "draft"
            lines.append(
                f"| {row['photos']} x {row['size']} | {variant} | {row['cpu_seconds_per_photo'][variant]:.3f} | "
                f"{row['seconds_per_photo'][variant]:.3f} | "
                f"{row['speed_vs_before'][variant]:.2f}x | {row['memory'][variant]['peak_per_photo_mb']:.0f} | "
                + (
                    f"| {row['faces_found_again']} | {row['faces_cut_from_a_finer_decode']} |"
                    if draft
                    else f"{row['faces']} | | |"
                )
            )
    lines += [
        "",
        "| photos | model | scores compared with the full decode's | max | 99th percentile | mean |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in result["rows"]:
        for a in row["agreement"]:
            lines.append(
                f"| {row['size']} | {a['model']} | {a['compared']} | {a['max']:.4f} | {a['p99']:.4f} | {a['mean']:.5f} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m face2hbe.loadtest.bench.decode", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--photos", type=int, default=12, help="Collages per set (layouts and orientations in turn).")
    parser.add_argument("--sets", default="phone,large", help="Comma-separated: phone (4032x3024), large (6000x4000).")
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--lfw", type=Path, default=DEFAULT_LFW)
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures to this JSON file.")
    parser.add_argument("--peak-child", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: one memory measurement
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)  # internal: the photos it takes
    args = parser.parse_args(argv)
    if args.peak_child:
        _peak_child(args.peak_child, args.folder, args.lfw)
        return 0
    result = run_decode_bench(args.photos, tuple(args.sets.split(",")), args.repository, args.lfw)
    print(markdown(result))
    print(f"machine: {result['machine']['cpu']}, load average after {result['load_average_after']}")
    if args.json:
        args.json.write_text(json.dumps({**result, "table": markdown(result)}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
