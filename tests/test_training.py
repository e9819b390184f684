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
    assert summary["mirror_average"] is False


def test_rerun_with_mirror_average_re_evaluates_and_exports_it(celeba_dir, tmp_path):
    import onnxruntime as ort

    from face2hbe.cli import main
    from face2hbe.export.build import export_repository

    out = tmp_path / "run"
    args = ["train", "--data", f"celeba:{celeba_dir}", "--output", str(out), "--weights", "none",
            "--image-size", "32", "--epochs", "1", "--limit", "24", "--batch-size", "8",
            "--cache-dir", str(tmp_path / "cache"), "--learning-rate", "1e-6"]  # near init: scores not saturated
    assert main(args) == 0
    assert json.loads((out / "training.json").read_text())["mirror_average"] is False
    weights_before = (out / "best.weights.h5").read_bytes()
    assert main([*args, "--mirror-average"]) == 0  # finished run: no more epochs, new evaluation
    mirrored = json.loads((out / "training.json").read_text())
    assert (out / "best.weights.h5").read_bytes() == weights_before
    assert mirrored["mirror_average"] is True and len(mirrored["history"]) == 1

    model_dir = export_repository(out, tmp_path / "repository")
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).integers(0, 256, (1, *contract.INPUT_SHAPE), dtype=np.uint8)
    (both,) = session.run(None, {contract.INPUT_NAME: image})
    (mirror,) = session.run(None, {contract.INPUT_NAME: image[:, :, ::-1].copy()})
    np.testing.assert_allclose(both, mirror, atol=1e-5)  # a mirror-averaged graph cannot tell a face from its mirror
    import keras

    from face2hbe.training.model import preprocess

    model = keras.models.load_model(out / "model.keras", compile=False)
    plain = np.asarray(model(preprocess(image, 32), training=False))[:, : len(contract.LABELS)]
    flipped = np.asarray(model(preprocess(image[:, :, ::-1], 32), training=False))[:, : len(contract.LABELS)]
    assert np.max(np.abs(plain - flipped)) > 2e-4  # the network alone does tell them apart
    np.testing.assert_allclose(both, (plain + flipped) / 2, atol=2e-5)


def test_constant_rate_run_keeps_every_epoch_for_averaging(celeba_dir, tmp_path):
    from face2hbe.cli import main

    out = tmp_path / "run"
    assert main(["train", "--data", f"celeba:{celeba_dir}", "--output", str(out), "--weights", "none",
                 "--image-size", "32", "--epochs", "2", "--limit", "24", "--batch-size", "8", "--patience", "2",
                 "--learning-rate", "3e-4", "--lr-schedule", "constant", "--keep-epoch-weights",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    history = json.loads((out / "training.json").read_text())["history"]
    assert [round(h["lr"], 8) for h in history] == [3e-4, 3e-4]  # cosine would give 3e-4 then 1.5e-4
    first, second, last = (_h5_arrays(out / f"{name}.weights.h5") for name in ("epoch-01", "epoch-02", "last"))
    assert first.keys() == second.keys() == last.keys()
    assert any(not np.array_equal(first[key], second[key]) for key in first)
    assert all(np.array_equal(second[key], last[key]) for key in second)


def _h5_arrays(path) -> dict:
    import h5py

    arrays = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return arrays


def test_masked_loss_ignores_unknown_labels():
    from keras import ops

    from face2hbe.training.model import masked_binary_crossentropy

    pred = ops.convert_to_tensor(np.array([[0.9, 0.2, 0.5]], np.float32))
    known = masked_binary_crossentropy(ops.convert_to_tensor(np.array([[1.0, 0.0, -1.0]], np.float32)), pred)
    other_unknown_value = masked_binary_crossentropy(ops.convert_to_tensor(np.array([[1.0, 0.0, -1.0]], np.float32)), ops.convert_to_tensor(np.array([[0.9, 0.2, 0.01]], np.float32)))
    expected = -(np.log(0.9) + np.log(0.8)) / 2
    assert float(known[0]) == pytest.approx(expected, rel=1e-5)
    assert float(other_unknown_value[0]) == pytest.approx(expected, rel=1e-5)


def test_local_weights_file_loads_into_backbone(tmp_path):
    """--weights PATH.h5: a local VGG16 file (here a saved random one; ImageNet needs the network)."""
    import keras

    from face2hbe.training.model import build_model, resolve_weights

    keras.utils.set_random_seed(3)
    source = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    path = tmp_path / "vgg16_notop.weights.h5"
    source.save_weights(path)
    model = build_model(3, weights=resolve_weights(str(path)), batchnorm=False)
    backbone = model.layers[1]
    np.testing.assert_array_equal(backbone.get_layer("block5_conv3").get_weights()[0], source.get_layer("block5_conv3").get_weights()[0])


def test_missing_weights_file_is_a_typed_error():
    from face2hbe.errors import DataError
    from face2hbe.training.model import resolve_weights

    with pytest.raises(DataError, match="weights file not found"):
        resolve_weights("/nonexistent/vgg16.h5")
    assert resolve_weights("imagenet") == "imagenet" and resolve_weights("none") is None


def test_pretrained_recipe_freezes_then_fine_tunes_block5():
    import keras

    from face2hbe.training.model import build_model, set_backbone_trainable
    from face2hbe.training.train import TrainConfig, _compile_for_epoch, make_loss

    model = build_model(3, weights=None, batchnorm=False)
    config = TrainConfig(data=[], output="unused", weights="imagenet", head_epochs=1)
    loss = make_loss(np.ones(3, np.float32))
    opt = _compile_for_epoch(model, config, 0, 3, loss, set_backbone_trainable)
    assert isinstance(opt, keras.optimizers.Adam)
    assert not any(layer.trainable for layer in model.layers[1].layers if layer.weights)
    opt = _compile_for_epoch(model, config, 1, 3, loss, set_backbone_trainable)
    assert isinstance(opt, keras.optimizers.SGD)
    assert float(opt.learning_rate) == pytest.approx(5e-5) and float(opt.momentum) == pytest.approx(0.9)
    trainable = {layer.name for layer in model.layers[1].layers if layer.weights and layer.trainable}
    assert trainable == {"block5_conv1", "block5_conv2", "block5_conv3"}


def test_warm_start_loads_an_earlier_run_and_refuses_other_targets(tmp_path):
    """--init-weights: a run's weights carry over; a run with other targets is a typed error."""
    import json

    import keras

    from face2hbe.errors import DataError
    from face2hbe.training.model import build_model
    from face2hbe.training.train import load_init_weights

    keras.utils.set_random_seed(1)
    names = [*contract.LABELS, "celeba_Smiling"]
    earlier = build_model(len(names), weights=None, batchnorm=True)
    path = tmp_path / "best.weights.h5"
    earlier.save_weights(path)
    (tmp_path / "training.json").write_text(json.dumps({"target_names": names}))

    keras.utils.set_random_seed(2)
    model = build_model(len(names), weights=None, batchnorm=True)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    assert not np.allclose(np.asarray(model(x)), np.asarray(earlier(x)))
    load_init_weights(model, path, names)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(earlier(x)), atol=1e-6)

    with pytest.raises(DataError, match="targets"):
        load_init_weights(build_model(3, weights=None, batchnorm=True), path, list(contract.LABELS))
    with pytest.raises(DataError, match="not found"):
        load_init_weights(model, tmp_path / "missing.weights.h5", names)


def test_quality_augmentation_keeps_shape_and_range_and_changes_some_images():
    import tensorflow as tf

    from face2hbe.training.train import _degrade

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 64, 64, 3)).astype(np.float32)
    out = np.stack([np.asarray(_degrade(tf.constant(im), seed=i)) for i, im in enumerate(images)])
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= -1e-3 and out.max() <= 255 + 1e-3
    changed = [not np.allclose(a, b) for a, b in zip(out, images)]
    # About a third JPEG, a quarter blurred: some but not all of 40 images change.
    assert 5 <= sum(changed) <= 35, sum(changed)


def test_warm_start_from_the_served_onnx_reproduces_it(celeba_dir, tmp_path):
    """--init-weights model.onnx: the folded convs and re-estimated BN give the served scores back."""
    import onnxruntime as ort
    from PIL import Image

    from face2hbe.errors import DataError
    from face2hbe.repository import onnx_build_info
    from face2hbe.training.model import build_model, mirror_averaged, preprocess
    from face2hbe.training.onnx_weights import _graph_weights, load_onnx_weights

    from conftest import REPOSITORY

    onnx_path = REPOSITORY / contract.MODEL_NAME / "1" / "model.onnx"
    convs, denses = _graph_weights(onnx_path)
    targets = denses[-1][1].shape[0]
    paths = sorted((celeba_dir / "images").iterdir())[:24]
    crops = np.stack([np.asarray(Image.open(p).convert("RGB").resize((150, 150))) for p in paths])
    info = onnx_build_info(onnx_path)
    size = info["working_size"]  # the served graph records how it was built
    model = build_model(targets, weights=None, batchnorm=True)
    load_onnx_weights(model, onnx_path, np.asarray(preprocess(crops[:16], size)))

    session = ort.InferenceSession(str(onnx_path))
    served = session.run(None, {contract.INPUT_NAME: crops})[0]
    # A mirror-averaged export (--mirror-average) scores a face and its mirror alike.
    mirrored_graph = np.allclose(served, session.run(None, {contract.INPUT_NAME: crops[:, :, ::-1].copy()})[0], atol=1e-5)
    assert mirrored_graph == info["mirror_average"]
    x = preprocess(crops, size)
    recovered = np.asarray(mirror_averaged(model, x) if mirrored_graph else model(x, training=False))[:, : len(contract.LABELS)]
    np.testing.assert_allclose(recovered, served, atol=1e-4)
    bn = model.layers[1].get_layer("block3_bn2")
    gamma, beta, mean, var = bn.get_weights()
    assert not np.allclose(var, 1.0) and np.allclose(gamma, np.sqrt(var + bn.epsilon), rtol=1e-5)

    with pytest.raises(DataError, match="weights here"):
        load_onnx_weights(build_model(targets + 1, weights=None, batchnorm=True), onnx_path, np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(DataError, match="batch-norm"):
        load_onnx_weights(build_model(targets, weights=None, batchnorm=False), onnx_path, np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(DataError, match="not found"):
        load_onnx_weights(model, tmp_path / "missing.onnx", np.zeros((1, 32, 32, 3), np.float32))
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(DataError, match="not a readable ONNX model"):
        load_onnx_weights(model, tmp_path / "bad.onnx", np.zeros((1, 32, 32, 3), np.float32))
