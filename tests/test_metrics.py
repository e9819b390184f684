"""Metric helpers: AUC intervals, threshold choice, masking of unknown labels."""

from __future__ import annotations

import numpy as np
import pytest

from face2hbe import metrics


def _people(n_people: int = 30, photos: int = 10, seed: int = 0):
    """Each person: one label and one score, repeated over many photos (as in LFW)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n_people)
    scores = labels * 0.6 + rng.random(n_people)  # informative but imperfect
    return np.repeat(labels, photos), np.repeat(scores, photos), np.repeat(np.arange(n_people), photos)


def test_resampling_people_widens_the_interval_when_photos_repeat_a_person():
    t, s, person = _people()
    lo_images, hi_images = metrics.auc_confidence_interval(t, s)
    lo_people, hi_people = metrics.auc_confidence_interval(t, s, groups=person)
    assert lo_people <= lo_images and hi_people >= hi_images
    assert (hi_people - lo_people) > 2 * (hi_images - lo_images)  # 10 photos each: ~sqrt(10) wider


def test_one_photo_per_group_is_the_plain_bootstrap():
    rng = np.random.default_rng(1)
    t, s = rng.integers(0, 2, 200), rng.random(200)
    assert metrics.auc_confidence_interval(t, s) == metrics.auc_confidence_interval(t, s, groups=np.arange(200))


def test_threshold_maximises_f1_and_unknown_labels_are_ignored():
    t = np.array([[0], [0], [1], [1], [1], [-1]], np.float32)
    s = np.array([[0.1], [0.7], [0.6], [0.8], [0.9], [0.95]], np.float32)
    (threshold,) = metrics.choose_thresholds(t, s, ["eyewear"]).values()
    assert threshold == np.float32(0.6)  # F1 0.857 there; 0.8 gives 0.8, 0.7 gives 0.67
    row = metrics.per_label_metrics(t, s, ["eyewear"], {"eyewear": threshold})["eyewear"]
    assert row["n"] == 5 and row["positives"] == 3 and row["recall"] == 1.0


def test_slice_metrics_split_recall_and_auc_by_attribute():
    """face2hbe slices: recall at the threshold and AUC inside a slice and in the rest, per label."""
    from face2hbe import contract
    from face2hbe.app.slices import markdown, slice_metrics

    labels = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 0], [0, 0, 0]], np.float32)
    scores = np.array(
        [[0.9, 0.2, 0.1], [0.4, 0.1, 0.2], [0.1, 0.8, 0.9], [0.2, 0.3, 0.7], [0.8, 0.9, 0.1], [0.3, 0.1, 0.2]],
        np.float32,
    )
    grey = np.array([True, True, True, False, False, False])
    attributes = {
        "Gray_Hair": grey,
        "Mustache": ~grey,
        "Goatee": np.zeros(6, bool),
        "Male": np.ones(6, bool),
        "Young": ~grey,
        "Pale_Skin": np.zeros(6, bool),
    }
    thresholds = dict.fromkeys(contract.LABELS, 0.5)
    result = slice_metrics(labels, scores, attributes, thresholds)
    beard = result["gray_hair"]["beard"]
    assert beard["in"] == {
        "positives": 2,
        "faces": 3,
        "recall": 0.5,
        "roc_auc": 1.0,
    }  # 0.2 missed, 0.8 found; both above the 0.1 negative
    assert beard["rest"] == {"positives": 1, "faces": 3, "recall": 1.0, "roc_auc": 1.0}
    assert result["male"]["eyewear"]["rest"]["faces"] == 0 and result["female"]["eyewear"]["in"]["recall"] is None
    table = markdown({"domains": {"celeba": {"slices": result}}})
    assert "| celeba | gray_hair | 0.50 / 1.000 (2+)" in table


def test_report_sections_are_replaced_between_their_markers(tmp_path):
    """The one writer of measured tables into docs (INT8, thresholds, slices): append once, then replace in place."""
    from face2hbe.paths import write_marked_section

    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n\ntext before\n")
    write_marked_section(doc, "<!-- a:start -->", "<!-- a:end -->", "cmd one", "| t |")
    write_marked_section(doc, "<!-- a:start -->", "<!-- a:end -->", "cmd two", "| u |")
    text = doc.read_text()
    assert (
        text.count("<!-- a:start -->") == 1
        and "| t |" not in text
        and "Measured by `cmd two`:\n\n| u |\n<!-- a:end -->" in text
    )
    assert text.startswith("# Title\n\ntext before\n\n<!-- a:start -->")


def test_rank_auc_equals_scikit_learns_with_ties():
    from sklearn.metrics import roc_auc_score

    from face2hbe.metrics import rank_auc

    rng = np.random.default_rng(3)
    y = (rng.random(500) < 0.3).astype(int)
    s = np.round(y * 0.3 + rng.random(500), 1)  # one decimal: many ties, as in an INT8 graph's outputs
    assert rank_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_roc_auc_leaves_unknown_targets_out_binarises_soft_ones_and_needs_both_classes():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.choice([-1.0, 0.0, 0.2, 0.7, 1.0], 300)
    s, w = rng.random(300), rng.random(300)
    known = y >= 0
    assert metrics.roc_auc(y, s) == pytest.approx(roc_auc_score(y[known] >= 0.5, s[known]), abs=1e-12)
    assert metrics.roc_auc(y, s, sample_weight=w) == pytest.approx(
        roc_auc_score(y[known] >= 0.5, s[known], sample_weight=w[known]), abs=1e-12
    )
    assert metrics.roc_auc(np.array([1.0, 0.9, -1.0]), np.array([0.1, 0.2, 0.3])) is None  # no negative known
    targets = np.stack([y, np.ones(300)], axis=1)
    scores = np.stack([s, s], axis=1)
    assert metrics.roc_aucs(targets, scores, ["a", "b"]) == {"a": metrics.roc_auc(y, s), "b": None}


def test_the_core_loads_no_heavy_library_at_import():
    """Every module directly in src/face2hbe imports without scikit-learn, SciPy, matplotlib, onnx, onnxruntime,
    TensorFlow/Keras, Ray, pyarrow or tritonclient (they load inside the functions that need them)."""
    import subprocess
    import sys

    from conftest import ROOT

    names = sorted(p.stem for p in (ROOT / "src" / "face2hbe").glob("*.py") if p.stem != "__init__")
    heavy = (
        "sklearn",
        "scipy",
        "matplotlib",
        "onnx",
        "onnxruntime",
        "tensorflow",
        "keras",
        "ray",
        "pyarrow",
        "tritonclient",
    )
    code = (
        f"import importlib, sys\nfor n in {names!r}: importlib.import_module('face2hbe.' + n)\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "metrics" in names and proc.stdout.strip() == "[]"
