"""The client on real photos through the live embedded server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from face2hbe import contract
from face2hbe.client import Recommender
from face2hbe.detection import DetectorSettings, detect_faces
from face2hbe.imaging import load_rgb

from conftest import SAMPLES


def test_boxes_land_on_lfw_faces(lfw_sample):
    """LFW's labelled face is centred in the 250x250 frame: the detector must find it there."""
    for path, _ in lfw_sample:
        image = load_rgb(path)
        boxes = detect_faces(image, DetectorSettings())
        assert boxes, f"no face found in {path.name}"
        centres = [((b.top + b.bottom) / 2, (b.left + b.right) / 2) for b in boxes]
        nearest = min(np.hypot(cy - 125, cx - 125) for cy, cx in centres)
        assert nearest < 35, f"{path.name}: no box near the centre ({boxes})"
        b = boxes[0]
        assert 50 <= b.width <= 200 and 50 <= b.height <= 200


def test_run_writes_one_record_per_image(grpc_url, lfw_sample, tmp_path):
    photos = [p for p, _ in lfw_sample] + [SAMPLES / "no_face_china.jpg"]
    out = tmp_path / "results.jsonl"
    summary = Recommender(url=grpc_url, workers=2).run(photos, out, progress=False)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["path"] for r in records) == sorted(map(str, photos))
    assert summary.images == len(photos) and summary.faces >= len(lfw_sample)
    by_path = {r["path"]: r for r in records}
    assert by_path[str(SAMPLES / "no_face_china.jpg")]["reason"] == "no face detected"
    for path, _ in lfw_sample:
        r = by_path[str(path)]
        assert r["width"] == 250 and r["height"] == 250 and r["error"] is None
        assert r["faces"], f"{path.name}: no face"
        for face in r["faces"]:
            assert len(face["box"]) == 4
            assert list(face["scores"]) == list(contract.LABELS)
            assert all(0.0 <= s <= 1.0 for s in face["scores"].values())
        # Either a recommendation or the reason there is none, never both missing.
        assert (r["recommendation"] is None) == (r["reason"] is not None)


def test_single_image_api_with_array_and_path(grpc_url):
    with Recommender(url=grpc_url) as rec:
        from_path = rec.recommend(SAMPLES / "grace_hopper.jpg")
        from_array = rec.recommend(load_rgb(SAMPLES / "grace_hopper.jpg"), name="hopper")
    assert len(from_path.faces) == 1
    assert from_path.faces[0].scores == pytest.approx(from_array.faces[0].scores, abs=1e-6)
    assert rec.catalog is not None


def test_labels_and_thresholds_come_from_the_server(grpc_url, server):
    import asyncio

    from face2hbe.client.inference import AsyncScorer, ClientSettings

    async def read():
        async with AsyncScorer(ClientSettings(url=grpc_url)) as scorer:
            return scorer.info

    info = asyncio.run(read())
    assert info.labels == server.labels
    assert info.thresholds == pytest.approx(server.thresholds)


def test_profile_folder_share_matches_hand_count(grpc_url, lfw_sample, tmp_path):
    """A folder is one profile: share of images showing each item, counted by hand from the records."""
    profile = tmp_path / "profile"
    profile.mkdir()
    for path, _ in lfw_sample:
        (profile / path.name).symlink_to(path)
    out = tmp_path / "results.jsonl"
    summary = Recommender(url=grpc_url, workers=2).run([profile], out, progress=False)
    (result,) = summary.profiles
    records = [json.loads(line) for line in out.read_text().splitlines()]
    with_faces = [r for r in records if r["faces"]]
    assert result.images == len(lfw_sample) and result.images_with_faces == len(with_faces)
    for label in contract.SERVED_LABELS:  # every served label, the attributes' too (issue #27)
        shown = sum(any(label in f["labels"] + f["attribute_labels"] for f in r["faces"]) for r in with_faces)
        assert result.share[label] == pytest.approx(shown / len(with_faces))


def test_async_api_works_inside_a_running_event_loop(grpc_url):
    """Jupyter and FastAPI run an event loop already: the awaitable API works there, the sync one says what to use."""
    import asyncio

    async def in_a_loop():
        async with Recommender(url=grpc_url) as rec:
            result = await rec.arecommend(SAMPLES / "grace_hopper.jpg")
            with pytest.raises(RuntimeError, match="arecommend"):
                rec.recommend(SAMPLES / "grace_hopper.jpg")
            return result

    result = asyncio.run(in_a_loop())
    assert len(result.faces) == 1 and result.model["name"] == "face2hbe"


def test_server_given_twice_is_refused():
    from face2hbe.client.inference import ClientSettings

    with pytest.raises(ValueError, match="not both"):
        Recommender(url="127.0.0.1:8001", client=ClientSettings())
