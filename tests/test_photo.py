"""The photo model (face2hbe_photo) on the real embedded Triton server: photo bytes in, every face out.

Each request is checked against the local path (decode -> detect_faces -> face_crops -> the
face2hbe model), so the server side can only pass by doing the client's own work.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from PIL import Image

from face2hbe import contract
from face2hbe.detection import detect_faces, detect_faces_scored, face_crops
from face2hbe.imaging import decode_rgb
from face2hbe.photo import PhotoSettings, find_faces

from conftest import SAMPLES
from test_bad_inputs import bomb_png_bytes

OUTPUTS = (contract.BOXES_NAME, contract.OUTPUT_NAME, contract.DETECTION_SCORES_NAME, contract.ATTRIBUTES_NAME)


def _grpc_infer(grpc_url: str, data: bytes) -> dict[str, np.ndarray]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    inp = grpcclient.InferInput(contract.PHOTO_INPUT_NAME, list(contract.PHOTO_INPUT_SHAPE), contract.PHOTO_INPUT_DTYPE)
    inp.set_data_from_numpy(np.array([data], dtype=object))
    result = client.infer(contract.PHOTO_MODEL_NAME, [inp], client_timeout=120)
    return {name: result.as_numpy(name) for name in OUTPUTS}


def _local(grpc_url: str, data: bytes) -> dict[str, np.ndarray]:
    """What the client computes for the same bytes: its detection and crops, scored by the served face2hbe model."""
    import tritonclient.grpc as grpcclient

    image = decode_rgb(data)
    found = detect_faces_scored(image)
    boxes = [box for box, _ in found]
    crops = face_crops(image, boxes)
    scores = np.zeros((0, len(contract.LABELS)), np.float32)
    attributes = np.zeros((0, len(contract.ATTRIBUTE_LABELS)), np.float32)
    if boxes:
        inp = grpcclient.InferInput(contract.INPUT_NAME, list(crops.shape), contract.INPUT_DTYPE)
        inp.set_data_from_numpy(crops)
        result = grpcclient.InferenceServerClient(grpc_url).infer(contract.MODEL_NAME, [inp])
        scores, attributes = result.as_numpy(contract.OUTPUT_NAME), result.as_numpy(contract.ATTRIBUTES_NAME)
    return {
        contract.BOXES_NAME: np.array([b.as_list() for b in boxes], np.int32).reshape(-1, 4),
        contract.OUTPUT_NAME: scores,
        contract.DETECTION_SCORES_NAME: np.array([s for _, s in found], np.float32),
        contract.ATTRIBUTES_NAME: attributes,
    }


def _check_outputs(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert (
        got[contract.BOXES_NAME].dtype == np.int32 and got[contract.BOXES_NAME].shape == want[contract.BOXES_NAME].shape
    )
    np.testing.assert_array_equal(got[contract.BOXES_NAME], want[contract.BOXES_NAME])
    assert got[contract.OUTPUT_NAME].dtype == np.float32 and got[contract.OUTPUT_NAME].shape == (
        len(want[contract.BOXES_NAME]),
        len(contract.LABELS),
    )
    np.testing.assert_allclose(got[contract.OUTPUT_NAME], want[contract.OUTPUT_NAME], atol=1e-4)
    assert got[contract.ATTRIBUTES_NAME].shape == (len(want[contract.BOXES_NAME]), len(contract.ATTRIBUTE_LABELS))
    np.testing.assert_allclose(got[contract.ATTRIBUTES_NAME], want[contract.ATTRIBUTES_NAME], atol=1e-4)
    assert got[contract.DETECTION_SCORES_NAME].dtype == np.float32
    np.testing.assert_allclose(got[contract.DETECTION_SCORES_NAME], want[contract.DETECTION_SCORES_NAME], atol=1e-5)


def _still_serves(server, grpc_url: str) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    assert client.is_server_ready() and client.is_model_ready(contract.PHOTO_MODEL_NAME)
    server.check_health()
    assert len(_grpc_infer(grpc_url, (SAMPLES / "grace_hopper.jpg").read_bytes())[contract.BOXES_NAME]) == 1


@pytest.mark.parametrize("name", ["grace_hopper.jpg", "astronaut_eileen_collins.jpg"])
def test_sample_photo_matches_the_local_path(grpc_url, name):
    data = (SAMPLES / name).read_bytes()
    got = _grpc_infer(grpc_url, data)
    assert len(got[contract.BOXES_NAME]) == 1
    _check_outputs(got, _local(grpc_url, data))


def test_http_with_binary_data_matches_grpc(grpc_url, http_url):
    import tritonclient.http as httpclient

    data = (SAMPLES / "grace_hopper.jpg").read_bytes()
    inp = httpclient.InferInput(contract.PHOTO_INPUT_NAME, list(contract.PHOTO_INPUT_SHAPE), contract.PHOTO_INPUT_DTYPE)
    inp.set_data_from_numpy(np.array([data], dtype=object), binary_data=True)
    result = httpclient.InferenceServerClient(http_url).infer(contract.PHOTO_MODEL_NAME, [inp])
    _check_outputs({name: result.as_numpy(name) for name in OUTPUTS}, _grpc_infer(grpc_url, data))


def test_no_face_gives_empty_outputs(grpc_url):
    got = _grpc_infer(grpc_url, (SAMPLES / "no_face_china.jpg").read_bytes())
    assert got[contract.BOXES_NAME].shape == (0, 4) and got[contract.BOXES_NAME].dtype == np.int32
    assert (
        got[contract.OUTPUT_NAME].shape == (0, len(contract.LABELS)) and got[contract.OUTPUT_NAME].dtype == np.float32
    )
    assert got[contract.DETECTION_SCORES_NAME].shape == (0,) and got[contract.DETECTION_SCORES_NAME].dtype == np.float32


@pytest.fixture(scope="module")
def three_faces(lfw_dir) -> bytes:
    """Three LFW photos (one face each) side by side, encoded as JPEG in memory only."""
    rows = list(csv.DictReader((lfw_dir / "labels.csv").open()))
    picked = []
    for row in rows:
        image = Image.open(lfw_dir / row["path"]).convert("RGB")
        if len(detect_faces(np.asarray(image))) == 1:
            picked.append(image)
        if len(picked) == 3:
            break
    canvas = Image.new("RGB", (sum(im.width for im in picked), max(im.height for im in picked)))
    for i, image in enumerate(picked):
        canvas.paste(image, (sum(im.width for im in picked[:i]), 0))
    buffer = io.BytesIO()
    canvas.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def test_three_faces_give_three_rows(grpc_url, three_faces):
    got = _grpc_infer(grpc_url, three_faces)
    assert len(got[contract.BOXES_NAME]) == 3
    _check_outputs(got, _local(grpc_url, three_faces))
    lefts = sorted(got[contract.BOXES_NAME][:, 3])
    assert lefts[1] - lefts[0] > 100 and lefts[2] - lefts[1] > 100, "one face from each tile"


def test_max_faces_keeps_the_largest(three_faces):
    faces = find_faces(three_faces, PhotoSettings(max_faces=2))
    assert faces.faces_total == 3 and len(faces.boxes) == len(faces.crops) == len(faces.detection_scores) == 2
    all_faces = find_faces(three_faces)
    np.testing.assert_array_equal(faces.boxes, all_faces.boxes[:2])


def test_concurrent_photos_all_come_back_right(grpc_url, server):
    """More photos at once than photo instances: every answer is the one for its own photo."""
    import tritonclient.grpc as grpcclient

    photos = [
        (SAMPLES / name).read_bytes()
        for name in ("grace_hopper.jpg", "astronaut_eileen_collins.jpg", "no_face_china.jpg")
    ] * 3
    want = [_grpc_infer(grpc_url, data) for data in photos[:3]] * 3
    client = grpcclient.InferenceServerClient(grpc_url)
    pending = []
    for data in photos:
        inp = grpcclient.InferInput(contract.PHOTO_INPUT_NAME, [1], contract.PHOTO_INPUT_DTYPE)
        inp.set_data_from_numpy(np.array([data], dtype=object))
        box = {}
        client.async_infer(
            contract.PHOTO_MODEL_NAME,
            [inp],
            lambda result, error, box=box: box.update(result=result, error=error),
            client_timeout=120,
        )
        pending.append(box)
    import time

    deadline = time.monotonic() + 120  # hang guard only
    while not all(pending) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(pending), "every request answered"
    for box, expected in zip(pending, want):
        assert box["error"] is None, box["error"]
        _check_outputs({name: box["result"].as_numpy(name) for name in OUTPUTS}, expected)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"this is not an image", "photo: not a recognised image format"),
        (b"", "photo: empty file (0 bytes)"),
        ((SAMPLES / "grace_hopper.jpg").read_bytes()[:2000], "photo: corrupt or truncated image"),
    ],
    ids=["text", "empty", "truncated"],
)
def test_bad_bytes_fail_with_the_reason_and_the_server_keeps_serving(server, grpc_url, data, reason):
    """The client's fault: gRPC INVALID_ARGUMENT, one line that names the reason, no traceback, no path."""
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as caught:
        _grpc_infer(grpc_url, data)
    message = caught.value.message()
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert message.startswith(reason) and "\n" not in message and "Traceback" not in message and "/" not in message, (
        message
    )
    _still_serves(server, grpc_url)


def test_bad_photo_over_http_is_400_with_one_line(server, http_url, grpc_url):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    inp = httpclient.InferInput(contract.PHOTO_INPUT_NAME, list(contract.PHOTO_INPUT_SHAPE), contract.PHOTO_INPUT_DTYPE)
    inp.set_data_from_numpy(np.array([b"not a photo"], dtype=object), binary_data=True)
    with pytest.raises(InferenceServerException) as caught:
        httpclient.InferenceServerClient(http_url).infer(contract.PHOTO_MODEL_NAME, [inp])
    assert caught.value.status() == "400"
    assert caught.value.message() == "photo: not a recognised image format"
    _still_serves(server, grpc_url)


def test_decompression_bomb_is_refused_from_its_header(server, grpc_url):
    """A 30000x30000 PNG (a few bytes: a header that claims 900 Mpx) is refused by its size, never decoded."""
    from tritonclient.utils import InferenceServerException

    bomb = bomb_png_bytes(side=30_000, garbage=True)
    assert len(bomb) < 200
    rss_before = server.rss()  # tritonserver and its stubs: the photo model's instances are stub processes
    with pytest.raises(InferenceServerException) as caught:
        _grpc_infer(grpc_url, bomb)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert caught.value.message() == f"photo: image is above the {PhotoSettings().max_pixels}-pixel limit"
    assert server.rss() - rss_before < 200 * 1024 * 1024  # decoding would take 900 MB+
    _still_serves(server, grpc_url)


def test_too_many_bytes_are_refused(server, grpc_url):
    from tritonclient.utils import InferenceServerException

    limit = PhotoSettings().max_file_bytes
    with pytest.raises(InferenceServerException) as caught:
        _grpc_infer(grpc_url, b"\xff\xd8" + bytes(limit))
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert caught.value.message() == f"photo: file is {limit + 2} bytes, above the {limit}-byte limit"
    _still_serves(server, grpc_url)


def test_served_config_and_health_cover_the_photo_model(server, http_url):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http_url)
    photo, crops = client.get_model_config(contract.PHOTO_MODEL_NAME), client.get_model_config(contract.MODEL_NAME)
    assert photo["max_batch_size"] == 0
    for key in (contract.PARAM_LABELS, contract.PARAM_ATTRIBUTE_LABELS, contract.PARAM_THRESHOLDS):
        assert photo["parameters"][key] == crops["parameters"][key]
    for key, value in PhotoSettings().parameters().items():
        assert photo["parameters"][key]["string_value"] == value
    metadata = client.get_model_metadata(contract.PHOTO_MODEL_NAME)
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        (contract.PHOTO_INPUT_NAME, contract.PHOTO_INPUT_DTYPE, list(contract.PHOTO_INPUT_SHAPE))
    ]
    assert {t["name"]: (t["datatype"], t["shape"]) for t in metadata["outputs"]} == {
        contract.BOXES_NAME: (contract.BOXES_DTYPE, list(contract.BOXES_SHAPE)),
        contract.OUTPUT_NAME: (contract.OUTPUT_DTYPE, list(contract.PHOTO_SCORES_SHAPE)),
        contract.DETECTION_SCORES_NAME: (contract.DETECTION_SCORES_DTYPE, list(contract.DETECTION_SCORES_SHAPE)),
        contract.ATTRIBUTES_NAME: (contract.ATTRIBUTES_DTYPE, list(contract.PHOTO_ATTRIBUTES_SHAPE)),
    }
    # check_health watches one stub process per instance of both models (the photo model's count from its config).
    stubs = sorted(server._stubs.values())
    assert stubs == sorted([contract.MODEL_NAME] + [contract.PHOTO_MODEL_NAME] * photo["instance_group"][0]["count"]), (
        stubs
    )


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_recommend_detect_server_gives_the_local_records(grpc_url, http_url, tmp_path, protocol):
    """`recommend --detect server`: same records as local detection; a photo the server refuses is a bad_image record."""
    import json
    import os

    from face2hbe.client import Recommender
    from face2hbe.client.inference import ClientSettings

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("grace_hopper.jpg", "group_apollo_11_crew.jpg", "no_face_china.jpg"):
        os.symlink(SAMPLES / name, folder / name)
    good = (SAMPLES / "grace_hopper.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(good[: len(good) // 3])  # its header reads fine: only the server finds it cut
    (folder / "text.jpg").write_bytes(b"not a photo\n" * 20)  # refused by the client's header check, as locally
    url = grpc_url if protocol == "grpc" else http_url

    def run(detect: str) -> dict[str, dict]:
        out = tmp_path / f"{detect}-{protocol}.jsonl"
        Recommender(client=ClientSettings(url=url, protocol=protocol), detect=detect, workers=1).run(
            [folder], out, progress=False
        )
        return {json.loads(line)["path"]: json.loads(line) for line in out.read_text().splitlines()}

    local, remote = run("local"), run("server")
    assert set(local) == set(remote) and len(remote) == 5
    for path, want in local.items():
        got = remote[path]
        assert set(got) == set(want), path  # the same record form
        if path.endswith("cut.jpg"):
            assert got["error"]["kind"] == want["error"]["kind"] == "bad_image"
            assert "refused by the server" in got["error"]["message"] and "truncated" in got["error"]["message"]
            continue
        assert got.get("error") == want.get("error") and (got["width"], got["height"]) == (
            want["width"],
            want["height"],
        )
        assert [f["box"] for f in got["faces"]] == [f["box"] for f in want["faces"]], path
        for g, w in zip(got["faces"], want["faces"]):
            np.testing.assert_allclose(
                [g["scores"][k] for k in contract.LABELS], [w["scores"][k] for k in contract.LABELS], atol=1e-4
            )
            np.testing.assert_allclose(
                [g["attributes"][k] for k in contract.ATTRIBUTE_LABELS],
                [w["attributes"][k] for k in contract.ATTRIBUTE_LABELS],
                atol=1e-4,
            )
            assert [s["sku"] for s in g["skus"]] == [s["sku"] for s in w["skus"]]
    assert len(remote[str(folder / "group_apollo_11_crew.jpg")]["faces"]) >= 3
