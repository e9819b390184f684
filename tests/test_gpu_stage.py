"""The GPU stage (training/gpu.py): its CPU-side pieces, and a pack -> fit -> load -> export round trip on real faces."""

from __future__ import annotations

import json

import numpy as np
import pytest

from face2hbe import contract
from face2hbe.training import gpu

from conftest import REPOSITORY

NAMES = list(contract.LABELS) + [f"celeba_{a}" for a in contract.CELEBA_ATTRIBUTES]


def _targets(**columns) -> np.ndarray:
    """One row per value: the named columns set, every other target 0."""
    n = len(next(iter(columns.values())))
    t = np.zeros((n, len(NAMES)), np.float32)
    for name, values in columns.items():
        t[:, NAMES.index(name)] = values
    return t


def test_slice_weights_raise_exactly_the_rare_slices():
    t = _targets(
        beard=[1, 1, 0, 1, -1, 1],
        celeba_Gray_Hair=[1, 0, 1, 1, 1, 0],
        celeba_Mustache=[0, 0, 0, 1, 0, 1],
        celeba_Goatee=[0, 0, 0, 0, 0, 1],
    )
    w = gpu.slice_weights(t, NAMES)
    extra = dict((name, e) for name, _, e in gpu.RARE_SLICES)
    grey, moustache = extra["grey-haired beard"], extra["moustache without goatee"]
    # grey beard; beard only; grey hair only; grey beard + moustache only; unknown beard; moustache with goatee.
    assert w.tolist() == [1 + grey, 1, 1, 1 + grey + moustache, 1, 1]


def test_stubble_is_a_hard_negative_only_when_asked():
    t = _targets(beard=[0, 1, 0, -1], celeba_5_o_Clock_Shadow=[1, 1, 0, 1])
    # stubble, shaven; stubble with a beard; neither; stubble with beard unknown
    assert gpu.slice_weights(t, NAMES).tolist() == [1, 1, 1, 1]
    assert gpu.slice_weights(t, NAMES, {"stubble without beard": 2.0}).tolist() == [3, 1, 1, 1]
    with pytest.raises(gpu.DataError, match="unknown slices"):
        gpu.slice_weights(t, NAMES, {"stubble": 2.0})


def test_label_weights_scale_only_the_named_targets_loss():
    from face2hbe.training.train import make_loss

    weights = gpu.label_weights(NAMES, {"beard": 3.0})
    assert weights[NAMES.index("beard")] == 3.0 and np.sum(weights) == len(NAMES) + 2
    with pytest.raises(gpu.DataError, match="unknown targets"):
        gpu.label_weights(NAMES, {"beards": 3.0})
    y_true = np.zeros((2, len(NAMES)), np.float32)
    y_pred = np.full((2, len(NAMES)), 0.5, np.float32)
    y_pred[:, NAMES.index("beard")] = 0.9  # wrong on beard only
    ones = np.ones(len(NAMES), np.float32)
    plain = np.asarray(make_loss(ones)(y_true, y_pred))
    beard = np.asarray(make_loss(ones, weights)(y_true, y_pred))
    # beard's term (-log 0.1) counts twice more; the others are unchanged
    assert np.allclose(beard - plain, 2 * -np.log(0.1) / len(NAMES), atol=1e-5)


def test_tinted_lenses_touch_only_the_eye_band(celeba_dir):
    from face2hbe.imaging import load_rgb

    image = np.asarray(load_rgb(celeba_dir / "images" / "000001.jpg"), np.float32)[None]
    tinted = gpu.tint_eyes(image, np.random.default_rng(0))
    h, w = image.shape[1:3]
    (r0, r1), (c0, c1) = gpu.EYE_BAND
    changed = np.abs(tinted - image).max(axis=(0, 3)) > 0
    rows, cols = np.nonzero(changed)
    assert rows.min() >= int(r0 * h) and rows.max() <= int(np.ceil(r1 * h))
    assert cols.min() >= int(c0 * w) and cols.max() <= int(np.ceil(c1 * w))
    assert (
        tinted[0, int((r0 + r1) / 2 * h), w // 2].sum() < image[0, int((r0 + r1) / 2 * h), w // 2].sum()
    )  # darker lenses


def test_augment_is_seeded_bounded_and_changes_the_face(celeba_dir):
    from face2hbe.imaging import load_rgb

    images = np.stack([np.asarray(load_rgb(celeba_dir / "images" / f"00000{i}.jpg"), np.float32) for i in (1, 2, 3)])
    a = gpu.augment(images, np.random.default_rng(7))
    b = gpu.augment(images, np.random.default_rng(7))
    assert a.shape == images.shape and a.dtype == images.dtype
    assert np.array_equal(a, b)
    assert a.min() >= 0 and a.max() <= 255
    assert all(np.abs(a[k] - images[k]).mean() > 1 for k in range(3))
    assert gpu.vgg_input(images)[..., 0].mean() == pytest.approx(
        images[..., 2].mean() - contract.VGG_BGR_MEAN[0], rel=1e-5
    )


@pytest.mark.slow  # packs, trains one step and re-evaluates on real faces (about a minute): make test-all
def test_pack_fit_load_export_round_trip(celeba_dir, lfw_dir, tmp_path):
    import onnxruntime as ort

    from face2hbe.export.build import export_repository
    from face2hbe.repository import ONNX_FILE
    from face2hbe.training.train import TrainConfig

    served = contract.MODEL_NAME
    config = TrainConfig(
        data=[f"celeba:{celeba_dir}", f"lfw:{lfw_dir}"],
        output=tmp_path / "run",
        weights="none",
        attributes=True,
        limit=40,
        cache_dir=tmp_path / "cache",
        mirror_average=True,
        progress=False,
    )
    onnx_path = REPOSITORY / served / contract.MODEL_VERSION / ONNX_FILE
    meta = gpu.pack(config, onnx_path, tmp_path / "pack", size=32, part_bytes=40_000)
    assert meta["parts"] >= 2 and meta["target_names"] == NAMES  # weights alone pass 40 kB: crops go to later parts
    joined = tmp_path / "joined"
    joined.mkdir()
    for part in sorted((tmp_path / "pack").iterdir()):
        for f in part.iterdir():
            (joined / f.name).write_bytes(f.read_bytes())

    import keras

    before = keras.config.dtype_policy().name
    summary = gpu.fit(joined, tmp_path / "out", epochs=1, batch_size=4, max_steps=2, precision="mixed_bfloat16")
    assert keras.config.dtype_policy().name == before  # the fit's policy does not outlive it
    assert summary["best_epoch"] == 1 and len(summary["history"]) == 1
    assert sum(1 for _ in (tmp_path / "out").glob("weights-*.npz")) >= 1

    run = gpu.load(tmp_path / "out", tmp_path / "run")
    assert run["working_size"] == 32 and set(run["thresholds"]) == set(contract.LABELS)
    assert json.loads((tmp_path / "run" / "gpu-stage.json").read_text())["pack"]["size"] == 32

    model_dir = export_repository(tmp_path / "run", tmp_path / "repository")
    session = ort.InferenceSession(
        str(model_dir / contract.MODEL_VERSION / ONNX_FILE), providers=["CPUExecutionProvider"]
    )
    import onnx

    graph = onnx.load(str(model_dir / contract.MODEL_VERSION / ONNX_FILE)).graph  # a bfloat16 fit, a float32 graph
    assert not [
        n.name
        for n in graph.node
        if n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.BFLOAT16 for a in n.attribute)
    ]
    crops = np.zeros((2, *contract.INPUT_SHAPE), np.uint8)
    scores, attributes = session.run([contract.OUTPUT_NAME, contract.ATTRIBUTES_NAME], {contract.INPUT_NAME: crops})
    assert scores.shape == (2, len(contract.LABELS)) and attributes.shape == (2, len(contract.ATTRIBUTE_LABELS))


def test_fit_command_takes_weights_as_name_equals_weight(tmp_path, capsys):
    """The GPU machine runs `fit` from the command line: --label-weight/--slice-weight are recipes' label_weight and
    slice_weight; a value without a weight is refused in one line before anything is read."""
    with pytest.raises(SystemExit) as stop:
        gpu.main(["fit", "--pack", str(tmp_path), "--output", str(tmp_path / "out"), "--label-weight", "beard"])
    assert stop.value.code == 2 and "give NAME=WEIGHT" in capsys.readouterr().err
