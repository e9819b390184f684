"""Face detection with face_recognition's detectors (dlib HOG or CNN) on a downscaled copy.

HOG time grows with pixels, so big photos are shrunk to `max_side` before
detection and the boxes are mapped back to full-resolution coordinates.

The detectors are dlib's, exactly as face_recognition.face_locations calls
them (same boxes, tested), but loaded alone: `import face_recognition` also
loads its landmark and embedding models (~3 s per worker process, unused here).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from face2hbe.imaging import Box


@dataclass(frozen=True)
class DetectorSettings:
    model: str = "hog"  # "hog" (CPU, fast) or "cnn" (dlib's CNN, slow without CUDA)
    upsample: int = 0  # times dlib up-samples the image first: finds smaller faces, costs 4x per step
    # When `upsample` finds no face, look again with this many up-samplings (small or
    # low-resolution faces) instead of paying 4x on every photo; <= upsample disables it.
    retry_upsample: int = 1
    max_side: int = 800  # detection runs on a copy no larger than this
    min_face: int = 20  # boxes smaller than this (in full-resolution pixels) are dropped

    def __post_init__(self):
        if self.model not in ("hog", "cnn"):
            raise ValueError(f"detector must be 'hog' or 'cnn', not {self.model!r}")
        if self.upsample < 0 or self.max_side < 32 or self.min_face < 1:
            raise ValueError("upsample must be >= 0, max_side >= 32 and min_face >= 1")


@lru_cache(maxsize=None)
def load_detector(model: str = "hog"):
    """dlib's detector for `model`, loaded once per process (face_recognition's model files)."""
    import dlib  # imported here: heavy, and only detection needs it

    if model == "cnn":
        import face_recognition_models

        return dlib.cnn_face_detection_model_v1(face_recognition_models.cnn_face_detector_model_location())
    return dlib.get_frontal_face_detector()


def face_locations(image: np.ndarray, upsample: int = 1, model: str = "hog") -> list[tuple[int, int, int, int]]:
    """(top, right, bottom, left) boxes, as face_recognition.face_locations returns them."""
    height, width = image.shape[:2]
    found = load_detector(model)(image, upsample)
    rects = [d.rect for d in found] if model == "cnn" else list(found)
    return [(max(r.top(), 0), min(r.right(), width), min(r.bottom(), height), max(r.left(), 0)) for r in rects]


def detect_faces(image: np.ndarray, settings: DetectorSettings = DetectorSettings()) -> list[Box]:
    """Boxes of the faces in an RGB uint8 image, largest first."""
    height, width = image.shape[:2]
    scale = min(1.0, settings.max_side / max(height, width))
    small = image
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    small = np.ascontiguousarray(small)
    found = face_locations(small, settings.upsample, settings.model)
    if not found and settings.retry_upsample > settings.upsample:
        found = face_locations(small, settings.retry_upsample, settings.model)
    boxes = []
    for top, right, bottom, left in found:
        box = Box(
            top=max(0, round(top / scale)),
            right=min(width, round(right / scale)),
            bottom=min(height, round(bottom / scale)),
            left=max(0, round(left / scale)),
        )
        if min(box.width, box.height) >= settings.min_face:
            boxes.append(box)
    boxes.sort(key=lambda b: b.width * b.height, reverse=True)
    return boxes


def nearest_to_center(boxes: list[Box], height: int, width: int) -> Box | None:
    """The box whose centre is nearest the image centre (LFW's labelled person)."""
    if not boxes:
        return None
    cy, cx = height / 2.0, width / 2.0
    return min(boxes, key=lambda b: ((b.top + b.bottom) / 2 - cy) ** 2 + ((b.left + b.right) / 2 - cx) ** 2)
