"""Training on a handful of real CelebA faces, from scratch."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from face2hbe import contract


def test_cli_smoke_training_writes_loadable_model(celeba_dir, tmp_path):
    import keras

    from face2hbe.app.cli import main

    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--data",
            f"celeba:{celeba_dir}",
            "--output",
            str(out),
            "--weights",
            "none",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--limit",
            "24",
            "--batch-size",
            "8",
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    assert code == 0
    summary = json.loads((out / "training.json").read_text())
    assert summary["working_size"] == 32 and summary["labels"] == list(contract.LABELS)
    assert set(summary["thresholds"]) == set(contract.LABELS)
    model = keras.models.load_model(out / "model.keras", compile=False)
    scores = np.asarray(model(np.zeros((2, 32, 32, 3), np.float32)))
    assert scores.shape == (2, len(contract.LABELS))
    assert summary["mirror_average"] is False
    # The JSON writer's guard (the data, output and cache paths were all given absolute here).
    assert not [s for s in _strings(summary) if s.startswith("/")]


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


@pytest.mark.slow  # a real training run: make test-all
def test_rerun_with_mirror_average_re_evaluates_and_exports_it(celeba_dir, tmp_path):
    import onnxruntime as ort

    from face2hbe.app.cli import main
    from face2hbe.export.build import export_repository

    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        f"celeba:{celeba_dir}",
        "--output",
        str(out),
        "--weights",
        "none",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--limit",
        "24",
        "--batch-size",
        "8",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--learning-rate",
        "1e-6",
    ]  # near init: scores not saturated
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


@pytest.mark.slow  # a real training run: make test-all
def test_constant_rate_run_keeps_every_epoch_for_averaging(celeba_dir, tmp_path):
    from face2hbe.app.cli import main

    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                f"celeba:{celeba_dir}",
                "--output",
                str(out),
                "--weights",
                "none",
                "--image-size",
                "32",
                "--epochs",
                "2",
                "--limit",
                "24",
                "--batch-size",
                "8",
                "--patience",
                "2",
                "--learning-rate",
                "3e-4",
                "--lr-schedule",
                "constant",
                "--keep-epoch-weights",
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    history = json.loads((out / "training.json").read_text())["history"]
    assert [round(h["lr"], 8) for h in history] == [3e-4, 3e-4]  # cosine would give 3e-4 then 1.5e-4
    first, second, last = (_h5_arrays(out / f"{name}.weights.h5") for name in ("epoch-01", "epoch-02", "last"))
    assert first.keys() == second.keys() == last.keys()
    assert any(not np.array_equal(first[key], second[key]) for key in first)
    assert all(np.array_equal(second[key], last[key]) for key in second)


def _tiny_config(celeba_dir, tmp_path, **overrides):
    from face2hbe.training.train import TrainConfig

    settings = dict(
        data=[f"celeba:{celeba_dir}"],
        output=tmp_path / "run",
        weights="none",
        schedule=[(32, 2)],
        batch_size=8,
        limit=24,
        cache_dir=tmp_path / "cache",
        progress=False,
        learning_rate=3e-4,
    )
    return TrainConfig(**{**settings, **overrides})


@pytest.mark.slow  # 15 s of training steps; the CLI smoke test keeps training in the default suite
def test_optimizer_state_carries_across_epochs_and_stages(celeba_dir, tmp_path):
    """One optimizer per run from scratch: its step count keeps rising through epochs and sizes."""
    from face2hbe.training.train import train

    summary = train(_tiny_config(celeba_dir, tmp_path, schedule=[(32, 2), (40, 1)]))
    history = summary["history"]
    steps = history[0]["iterations"]
    assert steps > 0 and [h["iterations"] for h in history] == [steps, 2 * steps, 3 * steps]  # not reset per epoch
    assert [h["size"] for h in history] == [32, 32, 40] and [h["epoch"] for h in history] == [1, 2, 3]
    # The cosine runs over the planned steps: epoch 2 starts at 0.5 * (1 + cos(pi / 3)) of the rate, epoch 3 at a quarter.
    assert [h["lr"] for h in history] == pytest.approx([3e-4, 2.25e-4, 0.75e-4], rel=1e-4)
    assert (tmp_path / "run" / "history.csv").read_text().count("\n") == 4  # CSVLogger: header + 3 epochs
    assert not (tmp_path / "run" / "backup").exists()  # BackupAndRestore's files go when the run is done


@pytest.mark.slow  # a real training run: make test-all
def test_interrupted_run_resumes_from_its_backup(celeba_dir, tmp_path):
    """A run stopped after epoch 1 and run again continues at epoch 2 with its optimizer state."""
    import keras

    from face2hbe.training.train import train

    class Interrupt(keras.callbacks.Callback):  # as a kill would: after epoch 1's files are written
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("interrupted")

    config = _tiny_config(celeba_dir, tmp_path)
    with pytest.raises(RuntimeError, match="interrupted"):
        train(config, callbacks=[Interrupt()])
    out = tmp_path / "run"
    first = json.loads((out / "state.json").read_text())["history"]
    assert [h["epoch"] for h in first] == [1] and (out / "backup").is_dir() and not (out / "training.json").exists()

    summary = train(config)  # the same command again
    history = summary["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0] == first[0]  # epoch 1 was not trained again
    steps = history[0]["iterations"]
    assert history[1]["iterations"] == 2 * steps  # optimizer restored from the backup, not a fresh one
    assert history[1]["lr"] == pytest.approx(1.5e-4, rel=1e-4)  # the cosine goes on from step `steps`
    assert not (out / "backup").exists()


@pytest.mark.slow  # a real training run: make test-all
def test_best_checkpoint_and_early_stopping_follow_validation_auc(celeba_dir, tmp_path):
    """ModelCheckpoint keeps the first epoch of highest val_mean_auc; EarlyStopping (patience 1, carried
    across the two stages) stops at the first epoch without gain; a stopped run is not trained on."""
    from face2hbe.training.train import train

    # 80 faces: the 5 validation faces hold a beard, so validation ROC AUC exists.
    config = _tiny_config(
        celeba_dir,
        tmp_path,
        limit=80,
        schedule=[(32, 2), (40, 2)],
        patience=1,
        learning_rate=1e-3,
        keep_epoch_weights=True,
    )
    history = train(config)["history"]
    aucs = [h["val_mean_auc"] for h in history]
    assert all(a == a for a in aucs)  # defined every epoch
    stale = [i for i in range(1, len(aucs)) if not aucs[i] > max(aucs[:i])]
    assert len(history) == (stale[0] + 1 if stale else 4)
    summary = json.loads((tmp_path / "run" / "training.json").read_text())
    best = aucs.index(max(aucs)) + 1
    assert summary["best_epoch"] == best and summary["working_size"] == history[best - 1]["size"]
    kept, epoch = (
        _h5_arrays(tmp_path / "run" / "best.weights.h5"),
        _h5_arrays(tmp_path / "run" / f"epoch-{best:02d}.weights.h5"),
    )
    assert all(np.array_equal(kept[k], epoch[k]) for k in epoch if "optimizer" not in k)
    if stale:  # rerun: the stop is remembered, nothing more is trained
        assert train(config)["history"] == history


@pytest.mark.slow  # a real training run (the CLI smoke test checks the same in the default suite): make test-all
def test_training_json_holds_no_absolute_path(celeba_dir, tmp_path, monkeypatch):
    from face2hbe.paths import portable as portable_path
    from face2hbe.paths import portable_spec
    from face2hbe.training.train import train

    monkeypatch.chdir(celeba_dir.parent.parent)  # data under the working directory, as ../shared/data is not
    summary = train(_tiny_config(celeba_dir, tmp_path, schedule=[(32, 1)]))
    written = json.loads((tmp_path / "run" / "training.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert not [s for s in _strings(written) if s.startswith("/")]
    assert written["config"]["data"] == [f"celeba:{celeba_dir.parent.name}/celeba"]
    assert portable_spec("celeba:../shared/data/celeba") == "celeba:../shared/data/celeba"  # as given
    assert portable_path(tmp_path) == os.path.relpath(tmp_path)


def _h5_arrays(path) -> dict:
    import h5py

    arrays = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(
            lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
        )
    return arrays


def test_masked_loss_ignores_unknown_labels():
    from keras import ops

    from face2hbe.training.model import masked_binary_crossentropy

    pred = ops.convert_to_tensor(np.array([[0.9, 0.2, 0.5]], np.float32))
    known = masked_binary_crossentropy(ops.convert_to_tensor(np.array([[1.0, 0.0, -1.0]], np.float32)), pred)
    other_unknown_value = masked_binary_crossentropy(
        ops.convert_to_tensor(np.array([[1.0, 0.0, -1.0]], np.float32)),
        ops.convert_to_tensor(np.array([[0.9, 0.2, 0.01]], np.float32)),
    )
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
    np.testing.assert_array_equal(
        backbone.get_layer("block5_conv3").get_weights()[0], source.get_layer("block5_conv3").get_weights()[0]
    )


def test_missing_weights_file_is_a_typed_error():
    from face2hbe.errors import DataError
    from face2hbe.training.model import resolve_weights

    with pytest.raises(DataError, match="weights file not found"):
        resolve_weights("/nonexistent/vgg16.h5")
    assert resolve_weights("imagenet") == "imagenet" and resolve_weights("none") is None


def test_pretrained_recipe_freezes_then_fine_tunes_block5():
    import keras

    from face2hbe.training.model import build_model
    from face2hbe.training.train import Stage, TrainConfig, compile_phase, make_loss, plan_stages

    model = build_model(3, weights=None, batchnorm=False)
    config = TrainConfig(data=[], output="unused", weights="imagenet", head_epochs=1, schedule=[(64, 2), (96, 1)])
    # One fit() per stage: the optimizer phase and the working size cut the epochs.
    assert plan_stages(config) == [Stage("head", 64, 0, 1), Stage("fine-tune", 64, 1, 2), Stage("fine-tune", 96, 2, 3)]
    loss = make_loss(np.ones(3, np.float32))
    opt = compile_phase(model, config, "head", loss, steps=10)
    assert isinstance(opt, keras.optimizers.Adam)
    assert not any(layer.trainable for layer in model.layers[1].layers if layer.weights)
    opt = compile_phase(model, config, "fine-tune", loss, steps=20)
    assert isinstance(opt, keras.optimizers.SGD)
    assert float(opt.learning_rate) == pytest.approx(5e-5) and float(opt.momentum) == pytest.approx(0.9)
    trainable = {layer.name for layer in model.layers[1].layers if layer.weights and layer.trainable}
    assert trainable == {"block5_conv1", "block5_conv2", "block5_conv3"}


def test_scratch_recipe_is_one_optimizer_with_a_cosine_over_the_planned_steps():
    import keras

    from face2hbe.training.model import build_model
    from face2hbe.training.train import Stage, TrainConfig, compile_phase, make_loss, plan_stages

    config = TrainConfig(data=[], output="unused", weights="none", schedule=[(64, 3), (96, 2)], learning_rate=1e-3)
    assert plan_stages(config) == [Stage("scratch", 64, 0, 3), Stage("scratch", 96, 3, 5)]
    model = build_model(3, weights=None, batchnorm=True)
    opt = compile_phase(model, config, "scratch", make_loss(np.ones(3, np.float32)), steps=100)
    assert isinstance(opt, keras.optimizers.AdamW)
    assert isinstance(opt._learning_rate, keras.optimizers.schedules.CosineDecay)
    assert float(opt._learning_rate(0)) == pytest.approx(1e-3) and float(opt._learning_rate(50)) == pytest.approx(5e-4)
    assert float(opt._learning_rate(100)) == pytest.approx(0.0, abs=1e-9)


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
    mirrored_graph = np.allclose(
        served, session.run(None, {contract.INPUT_NAME: crops[:, :, ::-1].copy()})[0], atol=1e-5
    )
    assert mirrored_graph == info["mirror_average"]
    x = preprocess(crops, size)
    recovered = np.asarray(mirror_averaged(model, x) if mirrored_graph else model(x, training=False))[
        :, : len(contract.LABELS)
    ]
    np.testing.assert_allclose(recovered, served, atol=1e-4)
    bn = model.layers[1].get_layer("block3_bn2")
    gamma, beta, mean, var = bn.get_weights()
    assert not np.allclose(var, 1.0) and np.allclose(gamma, np.sqrt(var + bn.epsilon), rtol=1e-5)

    with pytest.raises(DataError, match="weights here"):
        load_onnx_weights(
            build_model(targets + 1, weights=None, batchnorm=True), onnx_path, np.zeros((1, 32, 32, 3), np.float32)
        )
    with pytest.raises(DataError, match="batch-norm"):
        load_onnx_weights(
            build_model(targets, weights=None, batchnorm=False), onnx_path, np.zeros((1, 32, 32, 3), np.float32)
        )
    with pytest.raises(DataError, match="not found"):
        load_onnx_weights(model, tmp_path / "missing.onnx", np.zeros((1, 32, 32, 3), np.float32))
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(DataError, match="not a readable ONNX model"):
        load_onnx_weights(model, tmp_path / "bad.onnx", np.zeros((1, 32, 32, 3), np.float32))


SERVED_RECIPE = "training/recipes/served.yaml"


def test_served_recipe_is_a_valid_chain_of_stages():
    from face2hbe.training.recipe import load_recipe, stage_config

    from conftest import ROOT

    stages = load_recipe(ROOT / SERVED_RECIPE)
    assert [s.name for s in stages] == ["celeba64", "mixed64", "stage3", "stage4", "stage5"]
    assert [s.init for s in stages] == [None, "celeba64", "mixed64", "stage3", "stage4"]
    configs = [stage_config(s, ROOT.parent / "runs") for s in stages]
    assert [c.schedule for c in configs] == [[(64, 7)], [(64, 4)], [(64, 2)], [(64, 3)], [(96, 4)]]
    assert [c.learning_rate for c in configs] == [None, 3e-4, 2e-5, 1e-5, 4e-5]
    assert [c.lr_schedule for c in configs] == ["cosine", "cosine", "cosine", "constant", "cosine"]
    assert [c.average for c in configs] == [
        None,
        None,
        ["init", "epoch-01", "epoch-02"],
        ["epoch-01", "epoch-02", "epoch-03"],
        ["epoch-03", "epoch-04"],
    ]
    assert configs[0].data == ["celeba:../shared/data/celeba"]
    assert all(c.data == ["celeba:../shared/data/celeba", "lfw:../shared/data/lfw"] for c in configs[1:])
    assert all(c.from_scratch and c.attributes and c.batch_size == 32 for c in configs)
    assert configs[-1].mirror_average and configs[-1].init_weights == ROOT.parent / "runs" / "stage4" / "model.keras"
    assert not any("git show" in line for line in (ROOT / SERVED_RECIPE).read_text().splitlines())


@pytest.mark.parametrize(
    "stage, message",
    [
        ({"name": "b", "init": "c", "schedule": "64:1"}, "not an earlier stage"),
        ({"name": "b", "schedule": "64:2", "average": ["epoch-02"]}, "keep_epoch_weights"),
        (
            {"name": "b", "schedule": "64:2,96:1", "keep_epoch_weights": True, "average": ["epoch-02", "epoch-03"]},
            "trained at 64 px",
        ),
        (
            {"name": "b", "schedule": "64:2", "keep_epoch_weights": True, "average": ["epoch-05"]},
            "not one of its 2 epochs",
        ),
        ({"name": "b", "schedule": "64:2", "learning_rte": 1e-3}, "unknown settings"),
        ({"name": "b", "schedule": "64:1", "data": ["imagenet:/x"]}, "KIND:PATH"),
        ({"name": "b", "schedule": "16:1"}, "sizes >= 32"),
        ({"name": "a", "schedule": "64:1"}, "unique"),
    ],
)
def test_recipe_mistakes_are_typed_errors(tmp_path, stage, message):
    import yaml

    from face2hbe.training.recipe import RecipeError, load_recipe

    path = tmp_path / "recipe.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "defaults": {"data": ["celeba:x"], "weights": "none"},
                "stages": [{"name": "a", "schedule": "64:1"}, stage],
            }
        )
    )
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


@pytest.mark.slow  # a real training run: make test-all
def test_served_recipe_first_stage_runs_in_small(celeba_dir, tmp_path, monkeypatch):
    """`face2hbe train --recipe`: the served recipe's first stage, with command-line overrides making it tiny."""
    from face2hbe.app.cli import main

    from conftest import ROOT

    monkeypatch.chdir(ROOT)  # the recipe's data paths are relative to the repository root
    data = (
        []
        if celeba_dir.resolve() == (ROOT.parent / "shared" / "data" / "celeba").resolve()
        else ["--data", f"celeba:{celeba_dir}"]
    )
    assert (
        main(
            [
                "train",
                "--recipe",
                SERVED_RECIPE,
                "--stage",
                "celeba64",
                "--output-root",
                str(tmp_path / "runs"),
                *data,
                "--limit",
                "24",
                "--image-size",
                "32",
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "runs" / "celeba64" / "training.json").read_text())
    assert summary["config"]["attributes"] is True and summary["config"]["patience"] == 3  # from the recipe
    assert (
        summary["config"]["limit"] == 24 and summary["working_size"] == 32 and len(summary["history"]) == 1
    )  # overrides
    assert len(summary["target_names"]) == 3 + 40
    assert not (tmp_path / "runs" / "mixed64").exists()  # --stage: that one only


@pytest.mark.slow  # a real training run: make test-all
def test_recipe_chains_stages_and_averages_checkpoints(celeba_dir, tmp_path):
    """Stage b starts from stage a's model; its model is the mean of its start and its epoch."""
    import yaml

    from face2hbe.training.recipe import run_recipe

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "defaults": {
                    "data": [f"celeba:{celeba_dir}"],
                    "weights": "none",
                    "limit": 24,
                    "batch_size": 8,
                    "cache_dir": str(tmp_path / "cache"),
                },
                "stages": [
                    {"name": "a", "schedule": "32:1"},
                    {
                        "name": "b",
                        "init": "a",
                        "schedule": "32:1",
                        "learning_rate": 1e-4,
                        "lr_schedule": "constant",
                        "keep_epoch_weights": True,
                        "average": ["init", "epoch-01"],
                    },
                ],
            }
        )
    )
    runs = tmp_path / "runs"
    summaries = run_recipe(recipe, runs, progress=False)
    assert list(summaries) == ["a", "b"]
    b = summaries["b"]
    assert b["config"]["init_weights"].endswith("runs/a/model.keras") and b["final_weights"] == "mean of init, epoch-01"
    members = [_h5_arrays(runs / "b" / "epoch-01.weights.h5")]
    average = _h5_arrays(runs / "b" / "average.weights.h5")
    kernel = next(k for k in average if k.endswith("vars/0") and "conv" in k and k in members[0])
    import keras

    start = keras.models.load_model(runs / "a" / "model.keras", compile=False)
    start_kernel = start.layers[1].get_layer("block1_conv1").get_weights()[0]
    assert start_kernel.shape == average[kernel].shape
    assert not np.allclose(start_kernel, members[0][kernel])  # the epoch moved it
    np.testing.assert_allclose(average[kernel], (start_kernel + members[0][kernel]) / 2, rtol=1e-5, atol=1e-7)
    served = keras.models.load_model(runs / "b" / "model.keras", compile=False)  # what export reads: the average
    np.testing.assert_allclose(served.layers[1].get_layer("block1_conv1").get_weights()[0], average[kernel], atol=1e-7)


def test_curves_plot_leaves_the_matplotlib_backend_alone(tmp_path):
    import matplotlib
    from PIL import Image

    from face2hbe.metrics import plot_curves

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # an application's own choice, which library code must not switch
    try:
        rng = np.random.default_rng(0)
        targets = rng.integers(0, 2, (40, 3)).astype(np.float32)
        path = plot_curves(targets, rng.random((40, 3)), contract.LABELS, tmp_path / "curves.png", "(test)")
        assert matplotlib.get_backend() == "svg"
        assert Image.open(path).size == (1100, 500)
    finally:
        matplotlib.use(before)


def test_average_tool_takes_the_size_from_the_run(tmp_path):
    import importlib.util

    import click

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("average_checkpoints", ROOT / "tools" / "average_checkpoints.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    run = tmp_path / "run"
    run.mkdir()
    (run / "state.json").write_text(
        json.dumps({"history": [{"epoch": 1, "size": 64}, {"epoch": 2, "size": 96}, {"epoch": 3, "size": 96}]})
    )
    epochs = [run / f"epoch-0{i}.weights.h5" for i in (1, 2, 3)]
    assert tool.checkpoint_size(epochs[1:]) == 96
    with pytest.raises(click.UsageError, match="different sizes"):
        tool.checkpoint_size(epochs)
    (run / "training.json").write_text(json.dumps({"working_size": 96, "history": []}))
    assert tool.checkpoint_size([run / "best.weights.h5"]) == 96
    with pytest.raises(click.UsageError, match="pass --size"):
        tool.checkpoint_size([tmp_path / "elsewhere.weights.h5"])


@pytest.mark.slow  # a real training run: make test-all
def test_finished_run_rerun_with_more_epochs_trains_on(celeba_dir, tmp_path):
    """No backup left (the run had finished): more epochs continue from last.weights.h5 and the step count."""
    from face2hbe.training.train import train

    first = train(_tiny_config(celeba_dir, tmp_path, schedule=[(32, 1)], lr_schedule="constant"))["history"]
    history = train(_tiny_config(celeba_dir, tmp_path, schedule=[(32, 2)], lr_schedule="constant"))["history"]
    assert [h["epoch"] for h in history] == [1, 2] and json.dumps(history[0]) == json.dumps(
        first[0]
    )  # not trained again
    assert history[1]["iterations"] == 2 * history[0]["iterations"]
