"""Labeled face data behind one interface, and the 150x150 crops made from it.

Adapters return a `LabeledSet`: image paths, a target matrix (NaN-free; -1
marks an unknown label, masked in the loss), target names (the contract's
labels first) and a group per sample (identity when known) for splitting.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from face2hbe.contract import INPUT_SIZE, LABELS
from face2hbe.errors import DataError
from face2hbe.imaging import IMAGE_SUFFIXES

UNKNOWN = -1.0


@dataclass
class LabeledSet:
    name: str
    paths: list[Path]
    targets: np.ndarray  # float32 [N, K], -1 = unknown
    target_names: list[str]
    groups: list[str]
    aligned: bool  # True: pre-aligned face crops (CelebA); False: photos needing detection
    root: Path = field(default=Path("."))

    def __post_init__(self):
        if list(self.target_names[: len(LABELS)]) != list(LABELS):
            raise DataError(f"{self.name}: targets must start with {LABELS}")
        if len(self.paths) != len(self.targets) or len(self.paths) != len(self.groups):
            raise DataError(f"{self.name}: paths, targets and groups differ in length")

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index) -> "LabeledSet":
        index = np.asarray(index)
        return LabeledSet(
            self.name,
            [self.paths[i] for i in index],
            self.targets[index],
            self.target_names,
            [self.groups[i] for i in index],
            self.aligned,
            self.root,
        )


CELEBA_IDENTITIES = "identity_CelebA.txt"


def load_celeba(root: str | Path, with_attributes: bool = False, limit: int | None = None) -> LabeledSet:
    """CelebA layout: images/, labels.csv (filename,eyewear,beard,hat), list_attr_celeba.txt.

    With identity_CelebA.txt (`filename identity` per line, as in celeba_more/) the set is split
    by identity; without it by image. The set is named after its folder (celeba, celeba_more).
    """
    root = Path(root)
    labels_file = root / "labels.csv"
    if not labels_file.is_file():
        raise DataError(f"{labels_file}: CelebA labels file not found")
    rows = list(csv.DictReader(labels_file.open()))
    if limit:
        rows = rows[:limit]
    names = list(LABELS)
    targets = [[float(r[label]) for label in LABELS] for r in rows]
    if with_attributes:
        attr_names, attrs = _read_celeba_attributes(root / "list_attr_celeba.txt")
        names += [f"celeba_{a}" for a in attr_names]
        for r, t in zip(rows, targets):
            if r["filename"] not in attrs:
                raise DataError(f"{root}: {r['filename']} has no row in list_attr_celeba.txt")
            t.extend(attrs[r["filename"]])
    identities = _read_celeba_identities(root / CELEBA_IDENTITIES)
    missing = [r["filename"] for r in rows if identities and r["filename"] not in identities]
    if missing:
        raise DataError(f"{root / CELEBA_IDENTITIES}: no identity for {missing[0]} (and {len(missing) - 1} more)")
    return LabeledSet(
        name=root.name or "celeba",
        paths=[root / "images" / r["filename"] for r in rows],
        targets=np.asarray(targets, dtype=np.float32),
        target_names=names,
        # by identity where the set gives them, else by image
        groups=[f"identity:{identities[r['filename']]}" if identities else r["filename"] for r in rows],
        aligned=True,
        root=root,
    )


def _read_celeba_identities(path: Path) -> dict[str, str]:
    """identity_CelebA.txt: `filename identity` per line; {} when the set has no such file."""
    if not path.is_file():
        return {}
    pairs = (line.split() for line in path.read_text().splitlines())
    return {p[0]: p[1] for p in pairs if len(p) == 2}


def _read_celeba_attributes(path: Path) -> tuple[list[str], dict[str, list[float]]]:
    if not path.is_file():
        raise DataError(f"{path}: CelebA attribute file not found")
    lines = path.read_text().splitlines()
    names = lines[1].split()
    attrs = {}
    for line in lines[2:]:
        parts = line.split()
        if len(parts) == len(names) + 1:
            attrs[parts[0]] = [1.0 if v == "1" else 0.0 for v in parts[1:]]
    return names, attrs


CORRECTIONS_FILE = "corrections.csv"
# corrections.csv: these columns, then one per label (1 / 0 / empty = unknown); `face2hbe review` writes it.
CORRECTIONS_COLUMNS = ("file", "path", "review")


def load_folders(root: str | Path) -> LabeledSet:
    """The prototype's layout: root/eyewear/, root/beard/, root/hat/, root/none/.

    A photo in `eyewear/` is positive for eyewear and unknown for the other
    labels (masked), a photo in `none/` negative for all. A photo found in
    several label folders (same file name) is positive for each.
    A person's corrections in root/corrections.csv (column `file` = the photo's
    name, one column per label: 1, 0 or empty for unknown) replace those labels.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    found: dict[str, list[float]] = {}
    paths: dict[str, Path] = {}
    for folder in [*LABELS, "none"]:
        for path in sorted((root / folder).glob("*")) if (root / folder).is_dir() else []:
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            t = found.setdefault(path.name, [UNKNOWN] * len(LABELS))
            paths.setdefault(path.name, path)
            if folder == "none":
                t[:] = [0.0 if v == UNKNOWN else v for v in t]
            else:
                t[LABELS.index(folder)] = 1.0
    if not found:
        raise DataError(f"{root}: no images in any of {', '.join([*LABELS, 'none'])}/")
    _apply_corrections(root / CORRECTIONS_FILE, found)
    keys = sorted(found)
    return LabeledSet(
        name=root.name,
        paths=[paths[k] for k in keys],
        targets=np.asarray([found[k] for k in keys], dtype=np.float32),
        target_names=list(LABELS),
        groups=keys,
        aligned=False,
        root=root,
    )


def _apply_corrections(path: Path, found: dict[str, list[float]]) -> None:
    """Overwrite `found` targets with a corrections CSV's label cells (1 / 0 / empty = unknown)."""
    if not path.is_file():
        return
    reader = csv.DictReader(path.open(newline="", encoding="utf-8"))
    columns = [label for label in LABELS if label in (reader.fieldnames or [])]
    if "file" not in (reader.fieldnames or []) or not columns:
        raise DataError(f"{path}: expected a 'file' column and label columns of {', '.join(LABELS)}")
    for line, row in enumerate(reader, start=2):
        name = row["file"]
        if name not in found:
            raise DataError(f"{path}: line {line}: {name!r} is in none of the label folders")
        for label in columns:
            cell = (row[label] or "").strip()
            if cell not in ("1", "0", ""):
                raise DataError(f"{path}: line {line}: {label} must be 1, 0 or empty, not {cell!r}")
            found[name][LABELS.index(label)] = float(cell) if cell else UNKNOWN


def load_lfw(root: str | Path, with_attributes: bool = False, soft: bool = True) -> LabeledSet:
    """LFW pseudo-labels: labels.csv with path, p_<label> and farl_<attribute> probabilities.

    Groups are person names, so splits never put one identity on both sides.
    """
    root = Path(root)
    labels_file = root / "labels.csv"
    if not labels_file.is_file():
        raise DataError(f"{labels_file}: LFW labels file not found")
    reader = csv.DictReader(labels_file.open())
    attr_cols = [c for c in reader.fieldnames or [] if c.startswith("farl_")] if with_attributes else []
    paths, targets, groups = [], [], []
    for r in reader:
        t = [float(r[f"p_{label}"]) if soft else float(r[label]) for label in LABELS]
        t += [float(r[c]) for c in attr_cols]
        paths.append(root / r["path"])
        targets.append(t)
        groups.append(Path(r["path"]).parent.name)
    names = list(LABELS) + [f"celeba_{c[len('farl_') :]}" for c in attr_cols]
    return LabeledSet("lfw", paths, np.asarray(targets, dtype=np.float32), names, groups, aligned=False, root=root)


SPLITS = {"train": 0, "val": 1, "test": 2}  # split_by_group's parts, by name


def split_by_group(groups: list[str], fractions=(0.8, 0.1, 0.1), seed: int = 0) -> list[np.ndarray]:
    """Deterministic split of sample indices so that no group crosses a boundary.

    A group's side depends only on a hash of its name, so adding data never
    moves existing samples between train and validation.
    """
    edges = np.cumsum(fractions) / np.sum(fractions)
    buckets: list[list[int]] = [[] for _ in fractions]
    for i, g in enumerate(groups):
        h = int(hashlib.sha1(f"{seed}:{g}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        buckets[int(np.searchsorted(edges, h, side="right").clip(0, len(fractions) - 1))].append(i)
    return [np.asarray(b, dtype=np.int64) for b in buckets]


# --- crops -------------------------------------------------------------------------


def aligned_face_box(height: int, width: int, framing: dict):
    """Face box for a pre-aligned crop, from a framing measured by `measure_aligned_framing`."""
    from face2hbe.imaging import Box

    return Box(
        top=round(framing["top"] * height),
        right=round(framing["right"] * width),
        bottom=round(framing["bottom"] * height),
        left=round(framing["left"] * width),
    )


def measure_aligned_framing(paths: list[Path], sample: int = 200) -> dict:
    """Median face_recognition box (as fractions of the image) over aligned crops.

    Aligned crops put every face in the same place, so the client's detector
    box measured on a sample gives the framing for all of them. With HOG, CelebA's
    small crops need the one up-sampling asked here; BlazeFace (the default) ignores
    it and finds the face that fills the crop on its padded retry.
    """
    from face2hbe.detection import DetectorSettings, detect_faces
    from face2hbe.imaging import load_rgb

    settings = DetectorSettings(upsample=1, retry_upsample=0, min_face=8)
    fractions = []
    for path in paths[:: max(1, len(paths) // sample)][:sample]:
        image = load_rgb(path)
        h, w = image.shape[:2]
        boxes = detect_faces(image, settings)
        if boxes:
            b = boxes[0]
            fractions.append((b.top / h, b.right / w, b.bottom / h, b.left / w))
    if not fractions:
        raise DataError("face detection found no face in the aligned sample")
    top, right, bottom, left = np.median(np.asarray(fractions), axis=0)
    return {
        "top": float(top),
        "right": float(right),
        "bottom": float(bottom),
        "left": float(left),
        "measured_on": len(fractions),
    }


def build_crops(dataset: LabeledSet, cache_dir: Path | None = None, size: int = INPUT_SIZE, progress: bool = True):
    """uint8 crops [N, size, size, 3] with the client's framing, plus kept indices.

    Photos where no face is found are dropped (their index is not returned).
    Results are cached in `cache_dir` (training data only, never face crops
    of users' photos).
    """
    from tqdm import tqdm

    from face2hbe.detection import DetectorSettings, detect_faces, nearest_to_center
    from face2hbe.imaging import crop_face, load_rgb

    settings = DetectorSettings()
    key = hashlib.sha1(
        json.dumps([dataset.name, size, [str(p) for p in dataset.paths], _framing_version(), repr(settings)]).encode()
    ).hexdigest()[:16]
    cache = Path(cache_dir) / f"crops-{dataset.name}-{key}.npz" if cache_dir else None
    if cache and cache.is_file():
        data = np.load(cache)
        return data["crops"], data["kept"]
    framing = measure_aligned_framing(dataset.paths) if dataset.aligned else None
    crops, kept = [], []
    for i, path in enumerate(tqdm(dataset.paths, desc=f"cropping {dataset.name}", disable=not progress, unit="img")):
        image = load_rgb(path)
        h, w = image.shape[:2]
        if framing is not None:
            box = aligned_face_box(h, w, framing)
        else:
            box = nearest_to_center(detect_faces(image, settings), h, w)
            if box is None:
                continue
        crops.append(crop_face(image, box, size))
        kept.append(i)
    crops_arr = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
    kept_arr = np.asarray(kept, dtype=np.int64)
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, crops=crops_arr, kept=kept_arr)
    return crops_arr, kept_arr


def _framing_version() -> list:
    from face2hbe import imaging

    return [imaging.CROP_SCALE, imaging.CROP_LIFT]
