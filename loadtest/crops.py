"""Real 150x150 face crops for load tests and benchmarks, kept in memory only.

Preferred source: the first CelebA faces in the shared data folder, framed by
the training code's own `build_crops` (same crop as training and serving).
Fallback: faces detected in the bundled public-domain sample photos. Crops are
never cached or written to disk (they are faces of real people).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from face2hbe import contract
from face2hbe.errors import DataError
from face2hbe.paths import portable

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "client" / "samples"


def shared_data_dir() -> Path:
    """../shared/data next to the project, or $FACE2HBE_SHARED_DATA (as the tests use)."""
    return Path(os.environ.get("FACE2HBE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def celeba_crops(count: int, root: Path | None = None) -> np.ndarray | None:
    """The first `count` CelebA crops, or None when the data set is absent."""
    root = Path(root) if root else shared_data_dir() / "celeba"
    if not (root / "labels.csv").is_file():
        return None
    from face2hbe.training.data import build_crops, load_celeba

    crops, _ = build_crops(load_celeba(root, limit=count), cache_dir=None, progress=False)
    return crops if len(crops) else None


def sample_photo_crops(samples: Path = SAMPLES) -> np.ndarray:
    """Every face the client's detector finds in the bundled sample photos."""
    from face2hbe.detection import photo_face_crops
    from face2hbe.imaging import IMAGE_SUFFIXES

    crops = photo_face_crops(sorted(p for p in samples.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
    if not len(crops):
        raise DataError(f"{samples}: no face found in the sample photos")
    return crops


def load_crops(count: int = 32) -> tuple[np.ndarray, str]:
    """(crops uint8 [N,150,150,3], a one-line description of where they came from)."""
    crops = celeba_crops(count)
    source = f"{len(crops) if crops is not None else 0} CelebA crops from {portable(shared_data_dir() / 'celeba')}"
    if crops is None:
        crops = sample_photo_crops()
        source = f"{len(crops)} faces detected in {portable(SAMPLES)}"
    if crops.shape[1:] != contract.INPUT_SHAPE or crops.dtype != np.uint8:
        raise DataError(
            f"crops have shape {crops.shape} {crops.dtype}, expected uint8 [N,{contract.INPUT_SIZE},{contract.INPUT_SIZE},3]"
        )
    return crops, source


def batch_of(crops: np.ndarray, size: int, start: int = 0) -> np.ndarray:
    """`size` crops starting at `start`, cycling through the pool (a contiguous copy)."""
    index = (start + np.arange(size)) % len(crops)
    return np.ascontiguousarray(crops[index])
