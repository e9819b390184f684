"""Decode only what is needed (issue #25): the reduced JPEG decode against the full decode on real photos.

LFW's 250x250 photos are no bigger than the detection copy, so they are decoded whole: boxes and crops
are the full decode's to the bit, and the held-out AUCs (measured on such photos) cannot move. Phone-size
collages of LFW photos (loadtest.phone_photos, built in memory, never written) are decoded at 1/4 for
detection; their faces are found as with the full decode, and the crops score as the full decode's.
"""
from __future__ import annotations

import numpy as np
import pytest

from face2hbe.detection import DetectorSettings, decode_for_detection, detect_faces_scored, face_crops
from face2hbe.imaging import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS, MIN_CROP_SIDE, crop_box

from conftest import REPOSITORY

FULL, REDUCED = DetectorSettings(draft=False), DetectorSettings()


def _found(data: bytes, settings: DetectorSettings):
    photo = decode_for_detection(data, "photo", settings, DEFAULT_MAX_PIXELS, DEFAULT_MAX_FILE_BYTES)
    found = detect_faces_scored(photo, settings)
    return photo, [box for box, _ in found], [score for _, score in found]


def test_lfw_photos_give_the_full_decode_s_boxes_and_crops_to_the_bit(lfw_dir):
    from face2hbe.loadtest.phone_photos import lfw_photos

    faces = 0
    for path in lfw_photos(lfw_dir, 24):
        data = path.read_bytes()
        (full, full_boxes, full_scores), (reduced, boxes, scores) = _found(data, FULL), _found(data, REDUCED)
        assert reduced.scale == 1 and boxes == full_boxes and scores == full_scores
        np.testing.assert_array_equal(face_crops(reduced, boxes), face_crops(full, full_boxes))
        faces += len(boxes)
    assert faces >= 24


def _iou(a, b) -> float:
    inter = max(0, min(a.right, b.right) - max(a.left, b.left)) * max(0, min(a.bottom, b.bottom) - max(a.top, b.top))
    return inter / (a.width * a.height + b.width * b.height - inter)


def test_phone_photos_find_the_same_faces_and_score_them_alike(lfw_dir):
    """Three 4032x3024 collages (a grid, a portrait stored with EXIF orientation 6 whose small faces take the finer
    second look, one face filling the frame): the reduced decode finds the full decode's faces, and on the same
    boxes its crops score within 0.01 (99 % of the scores; all within 0.03, what moving a box by one pixel does)
    with the served weights in fp32."""
    import onnxruntime as ort

    from face2hbe import contract
    from face2hbe.loadtest.phone_photos import PHONE, phone_photos

    session = ort.InferenceSession(str(REPOSITORY / contract.MODEL_NAME / "1" / "model.onnx"), providers=["CPUExecutionProvider"])

    def scores(crops):
        return np.concatenate(session.run([contract.OUTPUT_NAME, contract.ATTRIBUTES_NAME], {contract.INPUT_NAME: crops}), axis=1)

    diffs, matched, total, second_looks = [], 0, 0, 0
    for name, data in phone_photos(lfw_dir, 3, PHONE):
        (full, full_boxes, _), (reduced, boxes, _) = _found(data, FULL), _found(data, REDUCED)
        assert full.scale == 1 and reduced.scale == 4 and reduced.shape == full.shape, name
        total += len(full_boxes)
        matched += sum(max((_iou(f, b) for b in boxes), default=0) >= 0.7 for f in full_boxes)
        second_looks += sum(crop_box(b, full.height, full.width)[2] < MIN_CROP_SIDE * reduced.scale for b in full_boxes)
        want, got = face_crops(full, full_boxes), face_crops(reduced, full_boxes)
        assert np.abs(got.astype(np.int16) - want).mean() < 1.0, name
        diffs.append(np.abs(scores(got) - scores(want)))
    diffs = np.concatenate(diffs)
    assert total >= 20 and matched >= 0.95 * total, (matched, total)
    assert second_looks >= 5  # the small faces were cut from a finer decode
    assert np.quantile(diffs, 0.99) <= 0.01 and diffs.max() <= 0.03, (np.quantile(diffs, 0.99), diffs.max())


def test_photo_model_parameter_turns_the_reduced_decode_off():
    """draft_decode "false" in the photo model's config: full-resolution decoding on the server (benchmarks compare both)."""
    from face2hbe.photo import PARAM_DRAFT_DECODE, PhotoSettings

    assert PhotoSettings().detector.draft and PhotoSettings.from_parameters({}).detector.draft
    assert PhotoSettings.from_parameters({PARAM_DRAFT_DECODE: "false", "max_faces": "3"}).detector == DetectorSettings(draft=False)
    assert PARAM_DRAFT_DECODE not in PhotoSettings().parameters()  # the committed config keeps the default
    with pytest.raises(ValueError, match="draft_decode"):
        PhotoSettings.from_parameters({PARAM_DRAFT_DECODE: "sometimes"})
