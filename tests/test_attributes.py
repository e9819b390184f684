"""The attributes output: served next to unchanged scores, rebuilt by the export upgrade, ranked by the client."""

from __future__ import annotations

import numpy as np
import pytest

from face2hbe import contract

from conftest import REPOSITORY

FP32 = REPOSITORY / contract.MODEL_NAME
INT8 = REPOSITORY / contract.INT8_MODEL_NAME
# LFW photos of one face with earrings (FaRL pseudo-label > 0.95) that the served model scores high on earrings.
EARRINGS_PHOTOS = ("Florecita_Cobian/Florecita_Cobian_0001.jpg", "Jennifer_Lopez/Jennifer_Lopez_0015.jpg")


@pytest.fixture(scope="module")
def lfw_crops(lfw_sample) -> np.ndarray:
    """Real face crops (client's detector and crop) of a few LFW photos, in memory."""
    from face2hbe.detection import photo_face_crops

    return photo_face_crops([path for path, _ in lfw_sample])


def _with_head_output(model_dir, tmp_path):
    """The committed graph with its 43-wide head tensor (what `scores` is sliced from) as an extra output."""
    import onnx

    from face2hbe.export.attributes import head_tensor

    model = onnx.load(str(model_dir / contract.MODEL_VERSION / "model.onnx"))
    head = head_tensor(model.graph)
    model.graph.output.append(onnx.helper.make_tensor_value_info(head, onnx.TensorProto.FLOAT, None))
    path = tmp_path / "with_head.onnx"
    onnx.save(model, str(path))
    return path, head


def test_served_model_returns_attributes_and_unchanged_scores(server, grpc_url, lfw_crops, tmp_path):
    """Over the wire: scores = the head's first 3 columns (as before the upgrade), attributes = its attribute columns."""
    import onnxruntime as ort
    import tritonclient.grpc as grpcclient

    assert len(lfw_crops) >= 4
    client = grpcclient.InferenceServerClient(grpc_url)
    inp = grpcclient.InferInput(contract.INPUT_NAME, list(lfw_crops.shape), contract.INPUT_DTYPE)
    inp.set_data_from_numpy(lfw_crops)
    result = client.infer(contract.MODEL_NAME, [inp])  # no outputs named: the server returns both
    scores, attributes = result.as_numpy(contract.OUTPUT_NAME), result.as_numpy(contract.ATTRIBUTES_NAME)
    assert scores.shape == (len(lfw_crops), len(contract.LABELS)) and scores.dtype == np.float32
    assert attributes.shape == (len(lfw_crops), len(contract.ATTRIBUTE_LABELS)) and attributes.dtype == np.float32

    path, head_name = _with_head_output(
        server.onnx_path.parents[1], tmp_path
    )  # the served folder (INT8: the CPU default)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (head,) = session.run([head_name], {contract.INPUT_NAME: lfw_crops})
    assert head.shape == (len(lfw_crops), contract.HEAD_WIDTH)
    np.testing.assert_allclose(scores, head[:, : len(contract.LABELS)], atol=1e-6)  # the pre-upgrade output
    np.testing.assert_allclose(attributes, head[:, list(contract.ATTRIBUTE_COLUMNS)], atol=1e-6)

    # A client asking for `scores` alone (as every client before the upgrade did) gets exactly that.
    only = client.infer(contract.MODEL_NAME, [inp], outputs=[grpcclient.InferRequestedOutput(contract.OUTPUT_NAME)])
    assert only.as_numpy(contract.ATTRIBUTES_NAME) is None
    np.testing.assert_array_equal(only.as_numpy(contract.OUTPUT_NAME), scores)


def test_served_config_lists_both_outputs_and_every_threshold(http_url):
    import tritonclient.http as httpclient

    from face2hbe.repository import config_from_json, labels_and_thresholds, output_labels, read_config

    config = config_from_json(httpclient.InferenceServerClient(http_url).get_model_config(contract.MODEL_NAME))
    assert [o.name for o in config.output] == [contract.OUTPUT_NAME, contract.ATTRIBUTES_NAME]
    assert output_labels(config) == {
        contract.OUTPUT_NAME: list(contract.LABELS),
        contract.ATTRIBUTES_NAME: list(contract.ATTRIBUTE_LABELS),
    }
    labels, thresholds = labels_and_thresholds(config)
    assert labels == list(contract.SERVED_LABELS) and set(thresholds) == set(contract.SERVED_LABELS)
    committed = labels_and_thresholds(read_config(FP32))
    assert (labels, thresholds) == committed


def test_upgrade_gives_a_scores_only_graph_the_served_attributes(tmp_path, lfw_crops):
    """The committed INT8 graph (exported with both outputs) without its attributes output is what a model exported
    before issue #17 looks like; upgrading it brings the output back: scores bit-identical, attributes equal to
    the committed graph's own, the committed config (thresholds included) written beside it."""
    import onnx
    import onnxruntime as ort

    from face2hbe.export.attributes import batching_of, upgrade_model_dir
    from face2hbe.export.repository import build_config, write_config
    from face2hbe.repository import labels_and_thresholds, read_config

    committed_path = INT8 / contract.MODEL_VERSION / "model.onnx"
    old = onnx.load(str(committed_path))
    (out,) = [o for o in old.graph.output if o.name == contract.ATTRIBUTES_NAME]
    old.graph.output.remove(out)
    (node,) = [n for n in old.graph.node if contract.ATTRIBUTES_NAME in n.output]  # the export's own Gather
    old.graph.node.remove(node)
    model_dir = tmp_path / contract.INT8_MODEL_NAME
    (model_dir / contract.MODEL_VERSION).mkdir(parents=True)
    onnx.save(old, str(model_dir / contract.MODEL_VERSION / "model.onnx"))
    config = read_config(INT8)
    _, thresholds = labels_and_thresholds(config)
    write_config(
        build_config(thresholds, batching_of(config), name=config.name, attributes=False, tensorrt=None), model_dir
    )
    assert not (model_dir / "attribute_labels.txt").exists()

    check = upgrade_model_dir(model_dir, lfw_crops, batching_of(read_config(model_dir)), thresholds)
    assert check.scores_identical and check.attributes_match_head and check.faces == len(lfw_crops)
    names = [contract.OUTPUT_NAME, contract.ATTRIBUTES_NAME]
    want = ort.InferenceSession(str(committed_path), providers=["CPUExecutionProvider"]).run(
        names, {contract.INPUT_NAME: lfw_crops}
    )
    upgraded = str(model_dir / contract.MODEL_VERSION / "model.onnx")
    got = ort.InferenceSession(upgraded, providers=["CPUExecutionProvider"]).run(
        names, {contract.INPUT_NAME: lfw_crops}
    )
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], atol=1e-6)
    # The committed config, thresholds included; its production labels came from a measurement
    # (`face2hbe thresholds --write` or `face2hbe promote`), which an upgrade does not make.
    del config.parameters[contract.PARAM_PRODUCTION_LABELS]
    assert read_config(model_dir) == config
    with pytest.raises(Exception, match="already has"):
        upgrade_model_dir(model_dir, lfw_crops, batching_of(config))


def test_earrings_are_recommended_only_where_the_catalog_opts_them_in(grpc_url, lfw_dir, tmp_path):
    """Earrings are below the production bar (docs/model.md): scored and reported on every face, recommended only by
    a catalog that opts them in."""
    from face2hbe.client import Recommender
    from face2hbe.client.results import BELOW_BAR, NO_PRODUCT

    photos = [lfw_dir / "images" / p for p in EARRINGS_PHOTOS]
    records = {}
    for opt_in in (True, False):
        catalog = tmp_path / f"catalog-{opt_in}.yaml"
        catalog.write_text(
            ("opt_in: [earrings]\n" if opt_in else "")
            + "products:\n  - {sku: ER-1, label: earrings, name: Hoops, price: 10}\n"
        )
        with Recommender(url=grpc_url, catalog=catalog) as rec:
            records[opt_in] = [rec.recommend(p) for p in photos]
            threshold = rec.model_info.thresholds["earrings"]
            assert "earrings" not in rec.model_info.production_labels
    passed = 0
    for photo, opted, plain in zip(photos, records[True], records[False]):
        for result in (opted, plain):
            (face,) = result.faces
            assert list(face.scores) == list(contract.LABELS)  # the record's scores are as before
            assert list(face.attributes) == list(contract.ATTRIBUTE_LABELS)
            assert result.model["attribute_thresholds"]["earrings"] == threshold
            assert "earrings" not in result.model["production_labels"]
            shown = face.attributes["earrings"] >= threshold
            assert ("earrings" in face.attribute_labels) == shown  # reported either way
        assert (["ER-1"] if shown else []) == [s["sku"] for s in opted.faces[0].skus], photo.name
        assert opted.catalog == {"opt_in": ["earrings"]} and plain.catalog is None
        assert plain.faces[0].skus == [] and plain.recommendation is None
        if shown:
            assert opted.recommendation["sku"] == "ER-1" and opted.top_label == "earrings"
            # The catalog sells earrings alone: without the opt-in nothing it has may be recommended.
            recommended = plain.shown_labels & set(plain.model["production_labels"])
            assert plain.reason == (NO_PRODUCT if recommended else BELOW_BAR), (photo.name, plain.shown_labels)
        passed += shown
    assert passed, f"neither photo's earrings score reaches the served threshold {threshold}: pick others"


def _celeba_label_folder(celeba_dir, root, per_class: int = 3):
    """A label folder (eyewear/ and none/) of real CelebA photos, linked (never copied) into tmp."""
    import csv

    rows = list(csv.DictReader((celeba_dir / "labels.csv").open()))
    eyewear = [r["filename"] for r in rows if r["eyewear"] == "1"][:per_class]
    none = [r["filename"] for r in rows if r["eyewear"] == "0" and r["beard"] == "0" and r["hat"] == "0"][:per_class]
    for folder, names in (("eyewear", eyewear), ("none", none)):
        (root / folder).mkdir(parents=True)
        for name in names:
            (root / folder / name).symlink_to(celeba_dir / "images" / name)
    return eyewear, none


def test_review_page_and_corrections_round_trip(celeba_dir, tmp_path):
    import csv
    import re

    from face2hbe.app.review import worst_mistakes, write_review
    from face2hbe.training.data import load_folders

    root = tmp_path / "labelled"
    eyewear, none = _celeba_label_folder(celeba_dir, root)
    before = load_folders(root)
    labels = list(contract.LABELS)
    # Scores that make the first eyewear photo a false negative and the first `none` photo a false positive.
    scores = np.where(before.targets == 1, 0.9, 0.1).astype(np.float32)
    fn, fp = before.groups.index(eyewear[0]), before.groups.index(none[0])
    scores[fn, 0], scores[fp, 0] = 0.05, 0.95
    thresholds = {label: 0.5 for label in labels}
    mistakes = worst_mistakes(before.targets, scores, labels, thresholds, per_kind=5)
    assert {(m.index, m.label, m.kind) for m in mistakes} == {
        (fn, "eyewear", "false negative"),
        (fp, "eyewear", "false positive"),
    }
    out = tmp_path / "review"
    html_path, csv_path = write_review(before, before.targets, labels, thresholds, mistakes, out, len(before))
    page = html_path.read_text()
    assert page.count('src="data:image/jpeg;base64,') == 2
    assert not re.search(r'(src|href)="(?!data:)', page), "the page must fetch nothing"
    assert sorted(p.name for p in out.iterdir()) == ["corrections.csv", "review.html"]  # no crops written

    rows = list(csv.DictReader(csv_path.open()))
    assert {r["file"] for r in rows} == {eyewear[0], none[0]}
    # Unchanged, the CSV re-imports to the same labels; a person's correction changes exactly that label.
    (root / "corrections.csv").write_text(csv_path.read_text())
    assert np.array_equal(load_folders(root).targets, before.targets)
    for r in rows:
        if r["file"] == none[0]:
            r["eyewear"] = "1"  # the person says: it does show eyewear
    with (root / "corrections.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    after = load_folders(root)
    expected = before.targets.copy()
    expected[fp, 0] = 1.0
    assert np.array_equal(after.targets, expected)


def test_review_command_scores_a_real_label_folder(celeba_dir, tmp_path):
    """The CLI end to end on real photos with the served graph: the page builds, its CSV re-imports."""
    from face2hbe.app.cli import main
    from face2hbe.training.data import load_folders

    root = tmp_path / "labelled"
    _celeba_label_folder(celeba_dir, root, per_class=2)
    out = tmp_path / "review"
    assert main(["review", str(root), "--output", str(out), "--repository", str(REPOSITORY), "--per-kind", "2"]) == 0
    assert (out / "review.html").read_text().startswith("<!doctype html>")
    (root / "corrections.csv").write_text((out / "corrections.csv").read_text())
    assert len(load_folders(root)) == 4
