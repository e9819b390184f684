"""Catalog ranking, per-image and per-profile rules, resumable JSONL."""

from __future__ import annotations

import json

import pytest

from face2hbe import contract
from face2hbe.client.catalog import load_catalog
from face2hbe.client.results import (
    NO_FACE,
    NO_ITEMS,
    FaceResult,
    ImageResult,
    JsonlWriter,
    aggregate_profile,
    summarise_image,
)
from face2hbe.errors import CatalogError

LABELS = ["eyewear", "beard", "hat"]
THRESHOLDS = {"eyewear": 0.5, "beard": 0.5, "hat": 0.5}


@pytest.fixture
def catalog():
    return load_catalog(labels=list(contract.SERVED_LABELS))


def _face(scores, catalog):
    labels = [l for l in sorted(scores, key=lambda l: -scores[l]) if scores[l] >= THRESHOLDS[l]]
    return FaceResult([0, 10, 10, 0], scores, labels, catalog.rank(scores, THRESHOLDS))


def test_bundled_catalog_covers_every_label(catalog):
    assert {p.label for p in catalog.products} == set(contract.SERVED_LABELS)


def test_catalog_accepts_attribute_labels_and_overrides_thresholds(tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text(
        "thresholds: {earrings: 0.8}\nproducts:\n  - {sku: E1, label: earrings, name: Hoops, price: 10}\n"
        "  - {sku: G1, label: eyewear, name: Frames, price: 10}\n"
    )
    catalog = load_catalog(path, labels=list(contract.SERVED_LABELS))
    served = {"eyewear": 0.5, "earrings": 0.5}
    assert [r["sku"] for r in catalog.rank({"eyewear": 0.6, "earrings": 0.7}, served)] == [
        "G1"
    ]  # 0.7 < the catalog's 0.8
    assert [r["sku"] for r in catalog.rank({"eyewear": 0.6, "earrings": 0.9}, served)] == ["E1", "G1"]
    with pytest.raises(CatalogError, match="'earrings', not one of the served labels") as info:
        load_catalog(path, labels=list(contract.LABELS))  # a model that serves no attributes
    assert "\n" not in str(info.value)
    path.write_text("thresholds: {sparkle: 0.8}\nproducts: []\n")
    with pytest.raises(CatalogError, match="threshold for 'sparkle'"):
        load_catalog(path, labels=list(contract.SERVED_LABELS))


def test_rank_uses_threshold_priority_and_min_score(catalog):
    ranked = catalog.rank({"eyewear": 0.9, "beard": 0.4, "hat": 0.65}, THRESHOLDS, limit=10)
    assert {r["label"] for r in ranked} == {"eyewear", "hat"}  # beard below threshold
    assert "HT-3003" not in {r["sku"] for r in ranked}  # fedora needs 0.7
    assert ranked[0]["sku"] == "EW-1002"  # 0.9 x 1.1
    leaders, rest = ranked[:2], ranked[2:]  # one per passing label first, then the rest
    assert {r["label"] for r in leaders} == {"eyewear", "hat"}
    for part in (leaders, rest):
        assert [r["rank_score"] for r in part] == sorted((r["rank_score"] for r in part), reverse=True)


def test_image_rule(catalog):
    r = summarise_image(
        ImageResult("a.jpg", faces=[_face({"eyewear": 0.2, "beard": 0.8, "hat": 0.6}, catalog)]), catalog
    )
    assert r.top_label == "beard" and r.recommendation["label"] == "beard"
    assert summarise_image(ImageResult("b.jpg"), catalog).reason == NO_FACE
    r = summarise_image(
        ImageResult("c.jpg", faces=[_face({"eyewear": 0.1, "beard": 0.1, "hat": 0.1}, catalog)]), catalog
    )
    assert r.reason == NO_ITEMS and r.recommendation is None


def test_profile_share(catalog):
    results = [
        ImageResult("1.jpg", faces=[_face({"eyewear": 0.9, "beard": 0.1, "hat": 0.1}, catalog)]),
        ImageResult("2.jpg", faces=[_face({"eyewear": 0.8, "beard": 0.7, "hat": 0.1}, catalog)]),
        ImageResult("3.jpg", faces=[_face({"eyewear": 0.1, "beard": 0.1, "hat": 0.1}, catalog)]),
        ImageResult("4.jpg"),  # no face: not counted in the share
    ]
    p = aggregate_profile("me", results, LABELS, catalog)
    assert p.images == 4 and p.images_with_faces == 3
    assert p.share == pytest.approx({"eyewear": 2 / 3, "beard": 1 / 3, "hat": 0.0})
    assert p.top_label == "eyewear" and p.recommendation["sku"] == "EW-1002"


def test_catalog_errors_name_the_file(tmp_path):
    bad = tmp_path / "cat.yaml"
    bad.write_text("products:\n  - {sku: X, label: shoes, name: n, price: 1}\n")
    with pytest.raises(CatalogError, match="cat.yaml.*shoes"):
        load_catalog(bad, labels=LABELS)
    bad.write_text("products: [ {sku: X, label: hat} ]\n")
    with pytest.raises(CatalogError, match="lacks name, price"):
        load_catalog(bad, labels=LABELS)


def test_resume_keeps_final_records_and_drops_retryable(tmp_path):
    out = tmp_path / "r.jsonl"
    with JsonlWriter(out) as w:
        w.write(ImageResult("a.jpg", reason=NO_FACE))
        w.write(ImageResult("b.jpg", error={"kind": "image_timeout", "message": "slow disk"}))
        w.write(ImageResult("c.jpg", error={"kind": "bad_image", "message": "empty file"}))
    with out.open("a") as f:
        f.write('{"path": "d.jpg", "fac')  # a line cut by a kill
    w = JsonlWriter(out, resume=True)
    assert set(w.done) == {"a.jpg", "c.jpg"}
    w.write(ImageResult("b.jpg", reason=NO_FACE))
    w.close()
    paths = [json.loads(l)["path"] for l in out.read_text().splitlines()]
    assert sorted(paths) == ["a.jpg", "b.jpg", "c.jpg"]


def test_a_record_is_what_asdict_gives_and_every_line_is_readable_before_close(tmp_path, catalog):
    """to_json skips asdict's deep copies (the same JSON), and each write is flushed: a reader (or a run killed
    after it) sees every line before the writer syncs or closes (fsync at most once a second, and on close)."""
    from dataclasses import asdict

    from face2hbe.client.results import FaceResult

    skus = catalog.rank({"eyewear": 0.9, "beard": 0.7, "hat": 0.1}, THRESHOLDS, limit=3)
    face = FaceResult([1, 2, 3, 4], {"eyewear": 0.9, "beard": 0.7, "hat": 0.1}, ["eyewear", "beard"], skus)
    result = ImageResult("x.jpg", width=10, height=20, faces=[face, face], model={"thresholds": dict(THRESHOLDS)})
    summarise_image(result, catalog)
    expected = {k: v for k, v in asdict(result).items() if not (k in ("faces_total", "catalog") and v is None)}
    assert json.loads(result.to_json()) == json.loads(json.dumps(expected))

    out = tmp_path / "r.jsonl"
    writer = JsonlWriter(out, sync_s=3600)  # no fsync during the run
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        writer.write(ImageResult(name, reason=NO_FACE))
        assert json.loads(out.read_text().splitlines()[-1])["path"] == name
    writer.close()
    writer.close()  # a second close (the with block's after an explicit one) is nothing
    assert len(out.read_text().splitlines()) == 3


def test_every_passing_label_gets_a_product_before_seconds(catalog):
    ranked = catalog.rank({"eyewear": 0.55, "beard": 0.95, "hat": 0.1}, THRESHOLDS, limit=3)
    assert [r["label"] for r in ranked] == ["beard", "eyewear", "beard"]


# --- issue #27: one notion of "passes", production labels, reasons, the ranking rule --------------------------------

SERVED = list(contract.SERVED_LABELS)
SERVED_THRESHOLDS = {label: 0.5 for label in SERVED} | {"earrings": 0.3}
PRODUCTION = [label for label in SERVED if label not in ("earrings", "necklace")]


def _info(production=PRODUCTION):
    from face2hbe.client.inference import ModelInfo

    return ModelInfo(
        SERVED,
        SERVED_THRESHOLDS,
        32,
        attribute_labels=tuple(contract.ATTRIBUTE_LABELS),
        production_labels=None if production is None else tuple(production),
    )


def _scored(catalog, *faces: dict, production=PRODUCTION):
    """recommend's record (score_image) for faces given as {label: score}; unnamed labels score 0.01."""
    import numpy as np

    from face2hbe.client.recommend import Prepared, score_image
    from face2hbe.imaging import Box

    rows = np.array([[face.get(label, 0.01) for label in SERVED] for face in faces], np.float32)
    boxes = [Box(top=0, right=10, bottom=10, left=0) for _ in faces]
    prepared = Prepared("x.jpg", 100, 100, boxes, None, len(faces))
    return score_image(prepared, None, rows if faces else None, _info(production), catalog, 3)


def _catalog(tmp_path, text: str):
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    return load_catalog(path, labels=SERVED)


def test_every_served_label_passes_by_one_rule_on_faces_image_and_profile(catalog):
    """An attribute that passes is a label like the scores' ones: the face shows it, its product is the image's pick
    and the profile's, and nothing says "no items" (the Eileen Collins record of issue #27: earrings alone)."""
    r = _scored(catalog, {"necktie": 0.9})
    (face,) = r.faces
    assert face.labels == [] and face.attribute_labels == ["necktie"] and face.passing_labels == ["necktie"]
    assert [s["label"] for s in face.skus] == ["necktie", "necktie"]
    assert r.top_label == "necktie" and r.recommendation == face.skus[0] and r.reason is None
    p = aggregate_profile("me", [r], SERVED, catalog, PRODUCTION)
    assert p.share["necktie"] == 1.0 and p.top_label == "necktie" and p.recommendation["sku"] == face.skus[0]["sku"]


def test_each_reason(catalog, tmp_path):
    from face2hbe.client.results import BELOW_BAR, NO_PRODUCT, REASONS

    assert len(set(REASONS)) == 4
    assert _scored(catalog).reason == NO_FACE
    assert _scored(catalog, {"eyewear": 0.2}).reason == NO_ITEMS
    below = _scored(catalog, {"earrings": 0.9, "necklace": 0.8})  # both pass, neither is production-grade
    assert below.faces[0].attribute_labels == ["earrings", "necklace"] and below.faces[0].skus == []
    assert below.reason == BELOW_BAR and below.recommendation is None and below.top_label is None
    hats_only = _catalog(tmp_path, "products:\n  - {sku: H1, label: hat, name: Cap, price: 9}\n")
    assert _scored(hats_only, {"beard": 0.9}).reason == NO_PRODUCT  # passes, recommended, nothing in the catalog
    fedora = _catalog(tmp_path, "products:\n  - {sku: H1, label: hat, name: Fedora, price: 9, min_score: 0.95}\n")
    assert _scored(fedora, {"hat": 0.9}).reason == NO_PRODUCT  # a product exists, its min_score is not reached
    for reason, results in (
        (NO_FACE, [ImageResult("a.jpg")]),
        (NO_ITEMS, [_scored(catalog, {"hat": 0.1})]),
        (BELOW_BAR, [below]),
        (NO_PRODUCT, [_scored(hats_only, {"beard": 0.9})]),
    ):
        p = aggregate_profile("me", results, SERVED, hats_only if reason == NO_PRODUCT else catalog, PRODUCTION)
        assert p.reason == reason and p.recommendation is None and p.top_label is None


def test_a_catalog_opts_a_below_bar_label_in(tmp_path):
    products = "products:\n  - {sku: E1, label: earrings, name: Hoops, price: 10}\n  - {sku: G1, label: eyewear, name: Frames, price: 10}\n"
    plain, opted = _catalog(tmp_path, products), _catalog(tmp_path, "opt_in: [earrings]\n" + products)
    assert opted.opt_in == ("earrings",) and opted.rules() == {"opt_in": ["earrings"]} and plain.rules() == {}
    scores = {"earrings": 0.9}
    assert plain.rank(scores, SERVED_THRESHOLDS, production=PRODUCTION) == []
    assert [r["sku"] for r in opted.rank(scores, SERVED_THRESHOLDS, production=PRODUCTION)] == ["E1"]
    assert [r["sku"] for r in plain.rank(scores, SERVED_THRESHOLDS)] == ["E1"]  # a config without production labels
    r = _scored(opted, scores)
    assert r.recommendation["sku"] == "E1" and r.catalog == {"opt_in": ["earrings"]}
    r = _scored(plain, scores)
    assert r.faces[0].attribute_labels == ["earrings"] and r.recommendation is None  # reported, not recommended
    assert _scored(plain, scores, production=None).recommendation["sku"] == "E1"  # no parameter: every label


def test_catalog_threshold_decides_the_label_and_its_products_alike(tmp_path):
    """A catalog threshold replaces the model's everywhere: shown labels, SKUs and the image's pick never disagree."""
    lower = _catalog(tmp_path, "thresholds: {hat: 0.3}\nproducts:\n  - {sku: H1, label: hat, name: Cap, price: 9}\n")
    r = _scored(lower, {"hat": 0.4})  # below the model's 0.5, above the catalog's 0.3
    assert (
        r.faces[0].labels == ["hat"] and r.recommendation["sku"] == "H1" and r.catalog == {"thresholds": {"hat": 0.3}}
    )
    higher = _catalog(tmp_path, "thresholds: {hat: 0.8}\nproducts:\n  - {sku: H1, label: hat, name: Cap, price: 9}\n")
    r = _scored(higher, {"hat": 0.7})
    assert r.faces[0].labels == [] and r.faces[0].skus == [] and r.reason == NO_ITEMS


def test_ranking_rule_is_priority_times_the_margin_over_the_threshold(tmp_path):
    cat = _catalog(
        tmp_path,
        "opt_in: [earrings]\nproducts:\n"
        "  - {sku: E1, label: earrings, name: Hoops, price: 10}\n"
        "  - {sku: G1, label: eyewear, name: Frames, price: 10}\n"
        "  - {sku: G2, label: eyewear, name: Shades, price: 10, priority: 2}\n"
        "  - {sku: G3, label: eyewear, name: Case, price: 10, priority: 2}\n",
    )
    # earrings 0.44 is 0.2 of the way from its 0.3 to 1; eyewear 0.6 is 0.2 of the way from 0.5: equal margins.
    ranked = cat.rank({"earrings": 0.44, "eyewear": 0.6}, SERVED_THRESHOLDS, limit=10, production=PRODUCTION)
    assert [r["rank_score"] for r in ranked] == [0.4, 0.2, 0.4, 0.2]  # leaders (one per label) first, then the rest
    assert [r["sku"] for r in ranked] == ["G2", "E1", "G3", "G1"]  # G2/G3 tie: SKU; E1/G1 tie: priority, then SKU
    # The margin, not the raw score: earrings 0.65 (margin 0.5) ranks above eyewear 0.7 (margin 0.4) at equal priority.
    ranked = cat.rank({"earrings": 0.65, "eyewear": 0.7}, SERVED_THRESHOLDS, limit=10, production=PRODUCTION)
    assert [(r["sku"], r["rank_score"]) for r in ranked] == [("G2", 0.8), ("E1", 0.5), ("G3", 0.8), ("G1", 0.4)]
    ranked = cat.rank({"earrings": 0.93, "eyewear": 0.7}, SERVED_THRESHOLDS, limit=1, production=PRODUCTION)
    assert [(r["sku"], r["rank_score"]) for r in ranked] == [("E1", 0.9)]  # 0.9 x 1.0 > 0.4 x 2
    r = _scored(cat, {"eyewear": 0.7}, {"earrings": 0.93})  # the image's pick: the best of the faces' first SKUs
    assert r.recommendation["sku"] == "E1" and r.top_label == "earrings"


def test_catalog_opt_in_and_keys_are_checked(tmp_path):
    for text, message in (
        ("opt_in: earrings\nproducts: []\n", "'opt_in' must be a list"),
        ("opt_in: [sparkle]\nproducts: []\n", "opt_in names \\['sparkle'\\]"),
        ("optin: [earrings]\nproducts: []\n", "unknown keys \\['optin'\\]"),
    ):
        with pytest.raises(CatalogError, match=message) as info:
            _catalog(tmp_path, text)
        assert "\n" not in str(info.value)
