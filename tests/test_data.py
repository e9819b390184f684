"""Data adapters on real files, splitting, thresholds into the model config, learning."""

from __future__ import annotations

import json

import numpy as np
import pytest

from face2hbe import contract
from face2hbe.errors import DataError
from face2hbe.training.data import UNKNOWN, load_celeba, load_folders, load_lfw, split_by_group

from conftest import SAMPLES


def test_celeba_labels_and_attributes(celeba_dir):
    data = load_celeba(celeba_dir, with_attributes=True, limit=200)
    assert len(data) == 200 and data.aligned
    assert data.target_names[:3] == list(contract.LABELS) and len(data.target_names) == 43
    assert set(np.unique(data.targets)) <= {0.0, 1.0}
    # The README's rule: eyewear == Eyeglasses.
    eyeglasses = data.target_names.index("celeba_Eyeglasses")
    np.testing.assert_array_equal(data.targets[:, 0], data.targets[:, eyeglasses])
    hat = data.target_names.index("celeba_Wearing_Hat")
    np.testing.assert_array_equal(data.targets[:, 2], data.targets[:, hat])
    assert all(p.is_file() for p in data.paths[:20])


def test_celeba_with_identities_splits_by_person(celeba_more_dir, tmp_path):
    data = load_celeba(celeba_more_dir, with_attributes=True)
    assert data.name == "celeba_more" and len(data) > 4000 and len(data.target_names) == 43
    assert len(set(data.groups)) < len(data) / 5  # several photos per person
    train, val, test = split_by_group(data.groups)
    for a, b in ((train, val), (train, test), (val, test)):
        assert not {data.groups[i] for i in a} & {data.groups[i] for i in b}, "an identity crosses splits"
    # A photo the identity file does not name is refused, not silently split by image.
    copy = tmp_path / "celeba_more"
    copy.mkdir()
    for name in ("labels.csv", "list_attr_celeba.txt"):
        (copy / name).write_text((celeba_more_dir / name).read_text())
    lines = (celeba_more_dir / "identity_CelebA.txt").read_text().splitlines()
    (copy / "identity_CelebA.txt").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(DataError, match=lines[0].split()[0]):
        load_celeba(copy)


def test_lfw_soft_labels_grouped_by_person(lfw_dir):
    data = load_lfw(lfw_dir, with_attributes=True)
    assert len(data) > 10_000 and not data.aligned
    assert np.all((data.targets >= 0) & (data.targets <= 1))
    assert not np.all(np.isin(data.targets[:, :3], [0.0, 1.0]))  # soft probabilities, not 0/1
    assert data.groups[0] == data.paths[0].parent.name
    train, val, test = split_by_group(data.groups)
    for a, b in ((train, val), (train, test), (val, test)):
        assert not {data.groups[i] for i in a} & {data.groups[i] for i in b}, "an identity crosses splits"
    assert 0.7 < len(train) / len(data) < 0.9


def test_folder_layout_masks_unknown_labels(tmp_path):
    for folder, name in (("eyewear", "a.jpg"), ("hat", "a.jpg"), ("beard", "b.jpg"), ("none", "c.jpg")):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / name).symlink_to(SAMPLES / "grace_hopper.jpg")
    (tmp_path / "none" / "notes.txt").write_text("not an image")
    data = load_folders(tmp_path)
    rows = {p.name: t.tolist() for p, t in zip(data.paths, data.targets)}
    assert rows == {
        "a.jpg": [1.0, UNKNOWN, 1.0],  # in eyewear/ and hat/, beard unknown
        "b.jpg": [UNKNOWN, 1.0, UNKNOWN],
        "c.jpg": [0.0, 0.0, 0.0],
    }


def test_split_is_stable_when_data_grows():
    groups = [f"person{i}" for i in range(500)]
    small = split_by_group(groups[:300])
    big = split_by_group(groups)
    for part_small, part_big in zip(small, big):
        assert set(part_small) <= set(part_big)


def test_thresholds_round_trip_into_model_config(tmp_path):
    from face2hbe.export.repository import build_config, write_config
    from face2hbe.repository import labels_and_thresholds, read_config

    thresholds = {"eyewear": 0.31, "beard": 0.42, "hat": 0.27, **{label: 0.61 for label in contract.ATTRIBUTE_LABELS}}
    write_config(build_config(thresholds), tmp_path / contract.MODEL_NAME)
    labels, read_back = labels_and_thresholds(read_config(tmp_path / contract.MODEL_NAME))
    assert labels == list(contract.SERVED_LABELS)
    assert read_back == pytest.approx(thresholds)


@pytest.mark.slow  # a real training run: make test-all
def test_tiny_training_run_lowers_its_loss(celeba_dir, tmp_path):
    from face2hbe.training.train import TrainConfig, train

    config = TrainConfig(
        data=[f"celeba:{celeba_dir}"],
        output=tmp_path / "run",
        weights="none",
        schedule=[(32, 4)],
        batch_size=8,
        limit=40,
        augment=False,
        progress=False,
        patience=10,
        cache_dir=tmp_path / "cache",
    )
    summary = train(config)
    losses = [h["loss"] for h in summary["history"]]
    assert len(losses) == 4
    assert losses[-1] < losses[0], losses
    saved = json.loads((tmp_path / "run" / "training.json").read_text())
    assert [h["loss"] for h in saved["history"]] == losses
