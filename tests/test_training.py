"""Training on a handful of real CelebA faces, from scratch."""
from __future__ import annotations

import json

import numpy as np
import pytest

from face2hbe import contract


def test_cli_smoke_training_writes_loadable_model(celeba_dir, tmp_path):
    import keras

    from face2hbe.cli import main

    out = tmp_path / "run"
    code = main(["train", "--data", f"celeba:{celeba_dir}", "--output", str(out), "--weights", "none",
                 "--image-size", "32", "--epochs", "1", "--limit", "24", "--batch-size", "8",
                 "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    summary = json.loads((out / "training.json").read_text())
    assert summary["working_size"] == 32 and summary["labels"] == list(contract.LABELS)
    assert set(summary["thresholds"]) == set(contract.LABELS)
    model = keras.models.load_model(out / "model.keras", compile=False)
    scores = np.asarray(model(np.zeros((2, 32, 32, 3), np.float32)))
    assert scores.shape == (2, len(contract.LABELS))


def test_masked_loss_ignores_unknown_labels():
    from keras import ops

    from face2hbe.training.model import masked_binary_crossentropy

    pred = ops.convert_to_tensor(np.array([[0.9, 0.2, 0.5]], np.float32))
    known = masked_binary_crossentropy(ops.convert_to_tensor(np.array([[1.0, 0.0, -1.0]], np.float32)), pred)
    other_unknown_value = masked_binary_crossentropy(ops.convert_to_tensor(np.array([[1.0, 0.0, -1.0]], np.float32)), ops.convert_to_tensor(np.array([[0.9, 0.2, 0.01]], np.float32)))
    expected = -(np.log(0.9) + np.log(0.8)) / 2
    assert float(known[0]) == pytest.approx(expected, rel=1e-5)
    assert float(other_unknown_value[0]) == pytest.approx(expected, rel=1e-5)
