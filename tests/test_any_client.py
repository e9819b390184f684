"""A non-Python gRPC client (Node.js + Triton's .proto files) gets the same scores as tritonclient."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from face2hbe import contract

from conftest import ROOT

NODE_CLIENT = ROOT / "tools" / "kserve-node"


@pytest.fixture(scope="module")
def node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH (install Node.js >= 18 to run the KServe v2 Node client check)")
    if not (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip(f"{NODE_CLIENT}/node_modules missing: run `make kserve-node` (npm ci) first")
    return node


def _run(node: str, grpc_url: str, batch: np.ndarray, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            node,
            str(NODE_CLIENT / "infer.js"),
            "--url",
            grpc_url,
            "--model",
            contract.MODEL_NAME,
            "--batch",
            str(len(batch)),
            *extra,
        ],
        input=batch.tobytes(),
        capture_output=True,
        timeout=60,
    )


def test_node_client_matches_tritonclient(node, grpc_url):
    import tritonclient.grpc as grpcclient

    batch = np.random.default_rng(7).integers(0, 256, (3, *contract.INPUT_SHAPE), dtype=np.uint8)
    done = _run(node, grpc_url, batch)
    assert done.returncode == 0, done.stderr.decode()
    printed = json.loads(done.stdout)

    client = grpcclient.InferenceServerClient(grpc_url)
    inp = grpcclient.InferInput(contract.INPUT_NAME, list(batch.shape), contract.INPUT_DTYPE)
    inp.set_data_from_numpy(batch)
    expected = client.infer(contract.MODEL_NAME, [inp]).as_numpy(contract.OUTPUT_NAME)

    assert printed["model"] == contract.MODEL_NAME
    assert printed["labels"] == list(contract.LABELS)
    assert set(printed["thresholds"]) == set(contract.LABELS)
    np.testing.assert_allclose(np.asarray(printed["scores"], np.float32), expected, atol=1e-6)


def test_node_client_reports_errors_in_one_line(node, grpc_url):
    short = _run(node, grpc_url, np.zeros((1, *contract.INPUT_SHAPE), np.uint8), "--batch", "2")
    assert short.returncode == 1 and "expected" in short.stderr.decode()
    too_big = _run(node, grpc_url, np.zeros((contract.MAX_BATCH_SIZE + 1, *contract.INPUT_SHAPE), np.uint8))
    assert too_big.returncode == 1  # the server refuses batches above max_batch_size
    assert len(too_big.stderr.decode().strip().splitlines()) == 1


def test_node_photo_mode_matches_the_python_clients_records(node, grpc_url):
    """Photo bytes from Node.js to face2hbe_photo: the Python client's boxes, scores within 1e-4 and decisions (the
    labels that pass, the production-grade ones among them), from the served config, on every sample."""
    from face2hbe.client import Recommender
    from face2hbe.client.decisions import passing
    from face2hbe.imaging import IMAGE_SUFFIXES

    from conftest import SAMPLES

    photos = sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    faces_seen = decided = 0
    with Recommender(grpc_url) as rec:
        for photo in photos:
            done = subprocess.run(
                [node, str(NODE_CLIENT / "infer.js"), "--url", grpc_url, "--model", contract.PHOTO_MODEL_NAME],
                input=photo.read_bytes(),
                capture_output=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr.decode()
            printed = json.loads(done.stdout)
            record = rec.recommend(photo)
            assert printed["labels"] == list(contract.LABELS) and set(printed["thresholds"]) == set(contract.LABELS)
            thresholds = {**printed["thresholds"], **printed["attribute_thresholds"]}
            assert (
                thresholds == rec.model_info.thresholds
                and printed["production_labels"] == record.model["production_labels"]
            )
            assert [f["box"] for f in printed["faces"]] == [f.box for f in record.faces], photo.name
            for face, want in zip(printed["faces"], record.faces):
                np.testing.assert_allclose(face["scores"], [want.scores[k] for k in contract.LABELS], atol=1e-4)
                np.testing.assert_allclose(
                    [face["attributes"][k] for k in contract.ATTRIBUTE_LABELS],
                    [want.attributes[k] for k in contract.ATTRIBUTE_LABELS],
                    atol=1e-4,
                )
                assert face["detection_score"] > 0
                # The same decisions: client/decisions.py on Node's own numbers gives Node's order exactly, and the
                # Python record (its own detection) shows the same labels.
                scores = {**dict(zip(contract.LABELS, face["scores"])), **face["attributes"]}
                assert face["passing"] == passing(scores, thresholds), photo.name
                assert set(face["passing"]) == set(want.passing_labels), photo.name
                assert face["recommendable"] == [
                    label for label in face["passing"] if label in printed["production_labels"]
                ]
                assert {s["label"] for s in want.skus} <= set(face["recommendable"]), photo.name
                decided += len(face["passing"])
            faces_seen += len(record.faces)
    assert faces_seen >= 5  # the samples hold several faces (the group photo alone has three)
    assert decided >= 3  # and labels pass on them (eyewear, beard, hat at least)


def test_node_photo_mode_reports_a_refused_photo_in_one_line(node, grpc_url):
    done = subprocess.run(
        [node, str(NODE_CLIENT / "infer.js"), "--url", grpc_url, "--model", contract.PHOTO_MODEL_NAME],
        input=b"not a photo\n" * 20,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "not a recognised image format" in lines[0]
