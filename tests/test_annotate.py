"""--annotate: an annotated JPEG per input photo (never the crops), boxes drawn where the faces are."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from face2hbe.client import Recommender
from face2hbe.client.annotate import annotated_path
from face2hbe.imaging import load_rgb

from conftest import SAMPLES


def test_annotated_copy_for_every_photo(grpc_url, lfw_sample, tmp_path):
    profile = tmp_path / "profile"
    profile.mkdir()
    for path, _ in lfw_sample:
        (profile / path.name).symlink_to(path)
    singles = [
        SAMPLES / "no_face_china.jpg",
        SAMPLES / "cameraman_grayscale.png",
        SAMPLES / "astronaut_eileen_collins.jpg",
    ]
    out, pictures = tmp_path / "results.jsonl", tmp_path / "annotated"
    summary = Recommender(url=grpc_url, workers=1).run([profile, *singles], out, progress=False, annotate=pictures)

    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(lfw_sample) + len(singles) == summary.annotated
    written = sorted(p for p in pictures.rglob("*") if p.is_file())
    assert len(written) == len(records), written  # one picture per photo: no crops, no leftovers
    for r in records:
        target = annotated_path(pictures, r["path"], r["profile"])
        assert target in written and target.suffix == ".jpg"
        with Image.open(target) as im:
            assert im.format == "JPEG"
            annotated = np.asarray(im.convert("RGB"), dtype=np.int16)
        original = load_rgb(r["path"]).astype(np.int16)
        height, width = original.shape[:2]
        band = annotated.shape[0] - height
        assert annotated.shape[1] == width and band > 0, "expected a title band above the photo"
        assert annotated[:band].min() < 100, "title band holds no text"
        photo = annotated[band:]
        for face in r["faces"]:
            top, right, bottom, left = face["box"]
            # The box outline is drawn on the face's top edge: those pixels changed.
            edge = np.abs(photo[top, left:right] - original[top, left:right]).mean()
            assert edge > 30, f"{target.name}: no box drawn at {face['box']} (mean change {edge:.1f})"
    titles = {annotated_path(pictures, r["path"], r["profile"]).name: r for r in records}
    assert titles["no_face_china.jpg"]["reason"] == "no face detected"
    assert "cameraman_grayscale.png.jpg" in titles


def test_draw_annotations_titles_recommendation_or_reason():
    from face2hbe.client.annotate import face_lines, title_text
    from face2hbe.client.results import FaceResult, ImageResult

    sku = {"sku": "EW-1", "name": "Round frames", "price": 89.0, "label": "eyewear"}
    face = FaceResult([10, 60, 60, 10], {"eyewear": 0.91, "beard": 0.1, "hat": 0.05}, ["eyewear"], [sku])
    result = ImageResult("a.jpg", faces=[face], top_label="eyewear", recommendation=sku)
    assert title_text(result, "EUR") == "eyewear: Round frames (89.00 EUR)"
    assert face_lines(face) == ["eyewear 0.91", "> Round frames"]
    assert title_text(ImageResult("b.jpg", reason="no items detected")) == "no items detected"
    none = FaceResult([10, 60, 60, 10], {"eyewear": 0.2, "beard": 0.3, "hat": 0.05}, [], [])
    assert face_lines(none) == ["no items (beard 0.30)"]


def test_the_picture_shows_every_passing_label():
    """Issue #27: the picture shows every passing label, and its colour and title follow the record."""
    from face2hbe.client.annotate import (
        LABEL_COLOURS,
        NO_ITEM_COLOUR,
        OTHER_COLOUR,
        face_colour,
        face_lines,
        title_text,
    )
    from face2hbe.client.results import BELOW_BAR, FaceResult, ImageResult

    sku = {"sku": "NT-1", "name": "Silk tie", "price": 49.0, "label": "necktie"}
    tie = FaceResult(
        [10, 60, 60, 10], {"eyewear": 0.1, "beard": 0.2, "hat": 0.05}, [], [sku], {"necktie": 0.8}, ["necktie"]
    )
    assert face_lines(tie) == ["necktie 0.80", "> Silk tie"] and face_colour(tie) == OTHER_COLOUR
    earrings = FaceResult(
        [10, 60, 60, 10], {"eyewear": 0.1, "beard": 0.2, "hat": 0.05}, [], [], {"earrings": 0.36}, ["earrings"]
    )
    assert face_lines(earrings) == ["earrings 0.36"] and face_colour(earrings) == OTHER_COLOUR
    assert title_text(ImageResult("c.jpg", faces=[earrings], reason=BELOW_BAR)) == BELOW_BAR
    glasses = FaceResult(
        [10, 60, 60, 10], {"eyewear": 0.9, "beard": 0.2, "hat": 0.05}, ["eyewear"], [], {"earrings": 0.36}, ["earrings"]
    )
    assert face_lines(glasses) == ["eyewear 0.90  earrings 0.36"] and face_colour(glasses) == LABEL_COLOURS["eyewear"]
    none = FaceResult([10, 60, 60, 10], {"eyewear": 0.1, "beard": 0.2, "hat": 0.05}, [], [], {"earrings": 0.25}, [])
    assert face_lines(none) == ["no items (earrings 0.25)"] and face_colour(none) == NO_ITEM_COLOUR
