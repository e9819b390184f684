"""Decode only what is needed (issue #25): the reduced JPEG decode against the full decode on real photos.

LFW's 250x250 photos are no bigger than the detection copy, so they are decoded whole: boxes and crops
are the full decode's to the bit, and the held-out AUCs (measured on such photos) cannot move. Phone-size
collages of LFW photos (loadtest.bench.phone_photos, built in memory, never written) are decoded at 1/4 for
detection; their faces are found as with the full decode, and the crops score as the full decode's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from face2hbe.detection import DetectorSettings, decode_for_detection, detect_faces_scored, face_crops
from face2hbe.imaging import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS, MIN_CROP_SIDE, crop_box

from conftest import REPOSITORY

FULL, REDUCED = DetectorSettings(draft=False), DetectorSettings()


@pytest.fixture(scope="module")
def phone_set(lfw_dir) -> list[tuple[str, bytes]]:
    """Three 4032x3024 collages of LFW photos, in memory: a grid, a portrait (EXIF 6) with small faces, one big face."""
    from face2hbe.loadtest.bench.phone_photos import PHONE, phone_photos

    return list(phone_photos(lfw_dir, 3, PHONE))


def _found(data: bytes, settings: DetectorSettings):
    photo = decode_for_detection(data, "photo", settings, DEFAULT_MAX_PIXELS, DEFAULT_MAX_FILE_BYTES)
    found = detect_faces_scored(photo, settings)
    return photo, [box for box, _ in found], [score for _, score in found]


def test_lfw_photos_give_the_full_decode_s_boxes_and_crops_to_the_bit(lfw_dir):
    from face2hbe.loadtest.bench.phone_photos import lfw_photos

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


def test_phone_photos_find_the_same_faces_and_score_them_alike(phone_set):
    """Three 4032x3024 collages (a grid, a portrait stored with EXIF orientation 6 whose small faces take the finer
    second look, one face filling the frame): the reduced decode finds the full decode's faces, and on the same
    boxes its crops score within 0.01 (99 % of the scores; all within 0.03, what moving a box by one pixel does)
    with the served weights in fp32."""
    import onnxruntime as ort

    from face2hbe import contract

    session = ort.InferenceSession(
        str(REPOSITORY / contract.MODEL_NAME / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )

    def scores(crops):
        return np.concatenate(
            session.run([contract.OUTPUT_NAME, contract.ATTRIBUTES_NAME], {contract.INPUT_NAME: crops}), axis=1
        )

    diffs, matched, total, second_looks = [], 0, 0, 0
    for name, data in phone_set:
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
    assert PhotoSettings.from_parameters({PARAM_DRAFT_DECODE: "false", "max_faces": "3"}).detector == DetectorSettings(
        draft=False
    )
    assert PARAM_DRAFT_DECODE not in PhotoSettings().parameters()  # the committed config keeps the default
    with pytest.raises(ValueError, match="draft_decode"):
        PhotoSettings.from_parameters({PARAM_DRAFT_DECODE: "sometimes"})


PEAK_SCRIPT = r"""
import io, json
import numpy as np
from PIL import Image
from face2hbe.imaging import Box, decode_photo

def status_kb(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))

def portrait_jpeg(width, height):  # a phone's portrait: landscape pixels stored with EXIF orientation 6
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (height // 16, width // 16, 3), dtype=np.uint8)
    stored = Image.fromarray(small).resize((width, height), Image.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()

def one_photo(data):  # the client's work on a photo: detection copy, a big face (from the 1/4 copy), a small one (full resolution)
    photo = decode_photo(data, max_side=800)
    photo.resized((600, 800))
    return photo.crops([Box(top=500, right=2500, bottom=2000, left=1000), Box(top=3000, right=1700, bottom=3200, left=1500)])

one_photo(portrait_jpeg(1600, 1200))  # warm: code paths, libjpeg, Pillow's allocator
data = portrait_jpeg(WIDTH, HEIGHT)
before = status_kb("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM starts again from here
crops = one_photo(data)
print(json.dumps({"peak_mb": (status_kb("VmHWM") - before) / 1024, "crops": len(crops)}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc (VmHWM and its reset)")
def test_a_phone_photo_never_needs_more_than_its_one_full_resolution_decode():
    """Peak memory per photo (client thread or photo-model instance): a 4032x3024 portrait (EXIF 6) with a face small
    enough for the full-resolution second look. A full upright decode (decode_rgb) peaks at about 128 MB here (decoded
    and turned images, its array); the finer decode stays as stored and each crop is turned alone, so the peak stays
    under that one stored decode (Pillow keeps RGB at 4 bytes a pixel: 46.5 MB; measured 45 MB)."""
    width, height = 4032, 3024
    out = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT.replace("WIDTH", str(width)).replace("HEIGHT", str(height))],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    one_decode_mb = width * height * 4 / 2**20
    assert figures["crops"] == 2
    assert figures["peak_mb"] < 1.3 * one_decode_mb, (figures, one_decode_mb)


SERVER_GROWTH_BOUND_MB = 300  # docs/serving.md, "Memory"


def test_server_memory_after_20_phone_photos_stays_within_300_mb_of_idle(server, grpc_url, phone_set):
    """The served photo model takes 20 phone-size photos (the three collages in turn, 4 at a time, one per instance):
    the server's resident memory (tritonserver and every backend stub) grows by at most 300 MB over idle (idle:
    each instance has done one small photo, so its detector is loaded). Measured: 69-81 MB after 215 faces with the
    128 px model scored in runs of 8 crops (367 MB in runs of 32: the face model's onnxruntime arena keeps the
    largest run's peak; docs/serving.md "Memory: rows per run"); each photo instance peaks about 60-70 MB over
    its idle per photo. Before issue #25 four 6000x6000 photos grew the server by 2 GB (each instance kept the peak
    of its full-size decodes)."""
    from concurrent.futures import ThreadPoolExecutor

    import tritonclient.grpc as grpcclient

    from face2hbe import contract
    from face2hbe.photo import PHOTO_INSTANCE_COUNT

    from conftest import SAMPLES

    def faces(client, data: bytes) -> int:
        photo = grpcclient.InferInput(
            contract.PHOTO_INPUT_NAME, list(contract.PHOTO_INPUT_SHAPE), contract.PHOTO_INPUT_DTYPE
        )
        photo.set_data_from_numpy(np.array([data], dtype=object))
        return len(client.infer(contract.PHOTO_MODEL_NAME, [photo], client_timeout=600).as_numpy(contract.BOXES_NAME))

    photos = [data for _, data in phone_set]
    clients = [grpcclient.InferenceServerClient(grpc_url) for _ in range(PHOTO_INSTANCE_COUNT)]
    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(faces, clients, [(SAMPLES / "grace_hopper.jpg").read_bytes()] * len(clients)))
        idle = server.rss()
        found = list(pool.map(lambda i: faces(clients[i % len(clients)], photos[i % len(photos)]), range(20)))
    grown_mb = (server.rss() - idle) / 2**20
    assert sum(found) >= 150, found  # the photos were decoded, detected and scored
    print(f"server grew {grown_mb:.0f} MB over idle ({idle / 2**20:.0f} MB) after {sum(found)} faces")
    assert grown_mb <= SERVER_GROWTH_BOUND_MB, f"server grew {grown_mb:.0f} MB over idle ({idle / 2**20:.0f} MB)"
