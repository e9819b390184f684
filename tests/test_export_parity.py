"""Keras on preprocessed floats vs the exported ONNX on raw uint8: same scores."""

from __future__ import annotations

import numpy as np
import pytest

from face2hbe import contract


@pytest.fixture(scope="module")
def crops(celeba_dir):
    """Real CelebA crops, framed like the client frames faces."""
    from face2hbe.training.data import build_crops, load_celeba

    data = load_celeba(celeba_dir, limit=8)
    images, kept = build_crops(data, cache_dir=None, progress=False)
    assert len(kept) == 8
    return images


# The served model's working size (stage 7: 128 px) in the default suite; 64 px and the crop's full size are slow.
SIZES = [
    pytest.param(64, marks=pytest.mark.slow),
    128,
    pytest.param(contract.INPUT_SIZE, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("working_size", SIZES)
def test_onnx_matches_keras(tmp_path, crops, working_size):
    import keras
    import onnxruntime as ort

    from face2hbe.export.onnx_export import export_onnx
    from face2hbe.repository import onnx_build_info
    from face2hbe.training.model import build_model, preprocess

    keras.utils.set_random_seed(1)
    model = build_model(num_outputs=5, weights=None, batchnorm=True)  # 5 targets: export keeps the first 3
    onnx_path = export_onnx(model, working_size, tmp_path / "model.onnx")

    expected = np.asarray(model(preprocess(crops, working_size), training=False))[:, : len(contract.LABELS)]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run([contract.OUTPUT_NAME], {contract.INPUT_NAME: crops})
    assert got.shape == (len(crops), len(contract.LABELS)) and got.dtype == np.float32
    assert np.max(np.abs(got - expected)) <= 1e-4
    assert np.ptp(got) > 0  # not a constant output: the comparison means something
    assert onnx_build_info(onnx_path) == {"working_size": working_size, "mirror_average": False}


@pytest.mark.slow  # 7 s of tf2onnx; tests/test_graphs.py checks the same property on the served graphs in the default suite
def test_mirror_averaged_export_scores_each_face_and_its_mirror(tmp_path, crops):
    import keras
    import onnxruntime as ort

    from face2hbe.export.onnx_export import export_onnx
    from face2hbe.repository import onnx_build_info
    from face2hbe.training.model import build_model, preprocess

    keras.utils.set_random_seed(2)
    model = build_model(num_outputs=5, weights=None, batchnorm=True)
    onnx_path = export_onnx(model, 64, tmp_path / "model.onnx", mirror_average=True)

    def keras_scores(images):
        return np.asarray(model(preprocess(images, 64), training=False))[:, : len(contract.LABELS)]

    plain, mirrored = keras_scores(crops), keras_scores(crops[:, :, ::-1])
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run([contract.OUTPUT_NAME], {contract.INPUT_NAME: crops})
    assert np.max(np.abs(got - (plain + mirrored) / 2)) <= 1e-4
    assert np.max(np.abs(plain - mirrored)) > 1e-3  # the mirror changes the scores: the average is tested
    assert onnx_build_info(onnx_path) == {"working_size": 64, "mirror_average": True}
    # Each face is scored with its own mirror, not with another face of the batch.
    (first,) = session.run([contract.OUTPUT_NAME], {contract.INPUT_NAME: crops[:1]})
    assert np.max(np.abs(first - got[:1])) <= 1e-5
