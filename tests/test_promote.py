"""`face2hbe promote RUN`: one step from a training run to what is served, behind a gate against the served model."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from face2hbe import contract
from face2hbe.app.promote import GATE_LABELS, compare

from conftest import REPOSITORY


class _Domain:
    """A test split as promote's gate sees it: targets per served label, a group per face."""

    def __init__(self, name: str, targets: np.ndarray, groups: np.ndarray):
        self.name, self.targets, self.groups, self.crops = name, targets, groups, targets  # crops: only len() is read


def _noisy(targets: np.ndarray, noise: float, rng) -> np.ndarray:
    """Scores that rank the positives first up to `noise` (a scorer of known quality)."""
    return np.clip(targets + rng.normal(0, noise, targets.shape), 0, 1).astype(np.float32)


def _gate(served_noise: float, candidate_noise: dict[str, float], faces: int = 600):
    rng = np.random.default_rng(0)
    labels = list(contract.SERVED_LABELS)
    targets = (rng.random((faces, len(labels))) < 0.2).astype(np.float32)
    domain = _Domain("celeba", targets, np.arange(faces))
    served = _noisy(targets, served_noise, rng)
    noise = np.asarray([candidate_noise.get(label, served_noise) for label in labels])
    candidate = np.clip(targets + rng.normal(0, 1, targets.shape) * noise, 0, 1).astype(np.float32)
    thresholds = {label: 0.5 for label in labels}
    return compare(
        {"celeba": served}, {"celeba": candidate}, {"celeba": candidate}, [domain], thresholds, thresholds, n_boot=200
    )


def test_gate_passes_a_better_candidate_and_names_what_refuses_a_worse_one():
    better = _gate(0.45, {label: 0.3 for label in GATE_LABELS})
    assert better["passed"] and not better["reasons"]
    row = better["domains"]["celeba"]["labels"]["beard"]
    assert row["diff"] > 0 and row["diff_ci"][0] > 0 and row["a_ci"][0] < row["a"] < row["a_ci"][1]

    worse_hat = _gate(0.45, {"eyewear": 0.3, "beard": 0.3, "hat": 0.9})
    assert not worse_hat["passed"]
    assert any(reason.startswith("hat on celeba: worse beyond noise") for reason in worse_hat["reasons"])

    same = _gate(0.45, {})  # the same quality: not worse, but not better either
    assert not same["passed"] and any("mean AUC" in reason for reason in same["reasons"])


def test_the_verdict_is_kept_beside_the_run_whatever_it_is(tmp_path):
    from face2hbe.app.promote import RECORD_FILE, write_record

    gate = _gate(0.45, {"eyewear": 0.3, "beard": 0.3, "hat": 0.9})
    result = {"run": "run", "gate": gate, "thresholds": {}, "production_labels": [], "sha256": {}, "slices": {}}
    write_record(result, tmp_path)
    kept = json.loads((tmp_path / f"{RECORD_FILE}.json").read_text())
    assert kept["gate"]["passed"] is False and kept["gate"]["reasons"] == gate["reasons"]
    assert "Verdict: **refused**" in (tmp_path / f"{RECORD_FILE}.md").read_text()


def _tiny_run(folder: Path, size: int = 32) -> Path:
    """A training run as `face2hbe train` leaves it (model.keras + training.json), untrained: promote's plumbing only."""
    import keras

    from face2hbe.training.model import build_model

    keras.utils.set_random_seed(1)
    names = list(contract.LABELS) + [f"celeba_{a}" for a in contract.CELEBA_ATTRIBUTES]
    folder.mkdir(parents=True)
    build_model(len(names), weights=None, batchnorm=True).save(folder / "model.keras")
    (folder / "training.json").write_text(
        json.dumps(
            {
                "labels": list(contract.LABELS),
                "target_names": names,
                "working_size": size,
                "mirror_average": True,
                "thresholds": {label: contract.DEFAULT_THRESHOLD for label in contract.LABELS},
            }
        )
    )
    return folder


def _lfw_subset(lfw_dir: Path, folder: Path, people_per_split: int = 12) -> Path:
    """LFW with a few identities from each of the seeded splits (the images folder linked, never copied)."""
    from face2hbe.training.data import split_by_group

    rows = list(csv.DictReader((lfw_dir / "labels.csv").open()))
    people = sorted({Path(r["path"]).parent.name for r in rows})
    keep = {p for part in split_by_group(people) for p in [people[i] for i in part[:people_per_split]]}
    folder.mkdir()
    with (folder / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if Path(r["path"]).parent.name in keep)
    (folder / "images").symlink_to(lfw_dir / "images")
    return folder


@pytest.mark.slow  # exports and quantizes a VGG16, scores CelebA's val/test splits, starts Triton (minutes): make test-all
@pytest.mark.timeout(3600)  # a hang guard: two promotions take many minutes on a busy 2-core machine
def test_a_promoted_run_is_what_the_server_answers_with(celeba_dir, lfw_dir, tmp_path):
    import onnxruntime as ort
    import tritonclient.grpc as grpcclient

    from face2hbe.app.promote import PromoteSettings, promote
    from face2hbe.net import free_port
    from face2hbe.repository import (
        ONNX_FILE,
        file_sha256,
        labels_and_thresholds,
        onnx_build_info,
        production_labels_in,
        read_config,
        validate_model_dir,
    )
    from face2hbe.serving.embedded import EmbeddedServer, ServerSettings

    repository = tmp_path / "repository"
    for name in (contract.MODEL_NAME, contract.INT8_MODEL_NAME, contract.PHOTO_MODEL_NAME):
        shutil.copytree(REPOSITORY / name, repository / name, ignore=shutil.ignore_patterns(ONNX_FILE))
        if (REPOSITORY / name / contract.MODEL_VERSION / ONNX_FILE).is_file():
            (repository / name / contract.MODEL_VERSION / ONNX_FILE).symlink_to(
                REPOSITORY / name / contract.MODEL_VERSION / ONNX_FILE
            )
    served_sha = file_sha256(repository / contract.INT8_MODEL_NAME / contract.MODEL_VERSION / ONNX_FILE)
    settings = PromoteSettings(
        _tiny_run(tmp_path / "run"),
        repository,
        celeba_dir,
        _lfw_subset(lfw_dir, tmp_path / "lfw"),
        cache_dir=tmp_path / "cache",
        docs=tmp_path / "docs",
        n_boot=50,
        progress=False,
    )

    # An untrained network loses to the served model: refused, and the repository is as it was.
    refused = promote(settings)
    assert not refused["gate"]["passed"] and not refused["promoted"] and refused["gate"]["reasons"]
    assert file_sha256(repository / contract.INT8_MODEL_NAME / contract.MODEL_VERSION / ONNX_FILE) == served_sha
    assert not (tmp_path / "docs").exists() and not list(tmp_path.glob(".promote-*"))
    assert json.loads((settings.run_dir / "promotion-gate.json").read_text())["gate"]["passed"] is False

    settings.force = True
    result = promote(settings)
    assert result["promoted"]
    fp32, int8 = (
        repository / name / contract.MODEL_VERSION / ONNX_FILE
        for name in (contract.MODEL_NAME, contract.INT8_MODEL_NAME)
    )
    assert onnx_build_info(int8)["source_sha256"] == file_sha256(fp32) == result["sha256"][contract.MODEL_NAME]
    assert onnx_build_info(int8)["working_size"] == 32
    for name in (contract.MODEL_NAME, contract.INT8_MODEL_NAME, contract.PHOTO_MODEL_NAME):
        config = read_config(repository / name)
        assert labels_and_thresholds(config)[1] == result["thresholds"], name
        assert production_labels_in(config) == result["production_labels"], name
    validate_model_dir(repository / contract.INT8_MODEL_NAME)
    gate_md = (tmp_path / "docs" / "model.md").read_text()
    assert (
        "promotion-gate:start" in gate_md and "thresholds-report:start" in gate_md and "slices-report:start" in gate_md
    )
    assert json.loads((tmp_path / "docs" / "eval" / "promotion-gate.json").read_text())["sha256"] == result["sha256"]

    # The server answers with the promoted files: its thresholds, and the scores of the new INT8 graph.
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    crops = np.random.default_rng(0).integers(0, 256, (4, *contract.INPUT_SHAPE), dtype=np.uint8)
    with EmbeddedServer(ServerSettings(repository, photo=False, **ports)):
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{ports['grpc_port']}")
        served = client.get_model_config(contract.MODEL_NAME, as_json=True)["config"]["parameters"]
        assert json.loads(served[contract.PARAM_THRESHOLDS]["string_value"]) == pytest.approx(result["thresholds"])
        inp = grpcclient.InferInput(contract.INPUT_NAME, list(crops.shape), contract.INPUT_DTYPE)
        inp.set_data_from_numpy(crops)
        answer = client.infer(contract.MODEL_NAME, [inp]).as_numpy(contract.OUTPUT_NAME)
    expected = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).run(
        [contract.OUTPUT_NAME], {contract.INPUT_NAME: crops}
    )[0]
    np.testing.assert_allclose(answer, expected, atol=1e-6)

    # Exporting a run alone replaces only the fp32 file: the INT8 file beside it no longer validates, so it is never served.
    from face2hbe.errors import ModelRepositoryError
    from face2hbe.export.build import export_repository

    export_repository(_tiny_run(tmp_path / "run2", size=40), repository)
    with pytest.raises(ModelRepositoryError, match="quantized from an fp32 graph"):
        EmbeddedServer(ServerSettings(repository, photo=False, **ports))
