"""Catalog ranking, per-image and per-profile rules, resumable JSONL."""
from __future__ import annotations

import json

import pytest

from face2hbe import contract
from face2hbe.client.catalog import load_catalog
from face2hbe.client.results import NO_FACE, NO_ITEMS, FaceResult, ImageResult, JsonlWriter, aggregate_profile, summarise_image
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
    path.write_text("thresholds: {earrings: 0.8}\nproducts:\n  - {sku: E1, label: earrings, name: Hoops, price: 10}\n"
                    "  - {sku: G1, label: eyewear, name: Frames, price: 10}\n")
    catalog = load_catalog(path, labels=list(contract.SERVED_LABELS))
    served = {"eyewear": 0.5, "earrings": 0.5}
    assert [r["sku"] for r in catalog.rank({"eyewear": 0.6, "earrings": 0.7}, served)] == ["G1"]  # 0.7 < the catalog's 0.8
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
    r = summarise_image(ImageResult("a.jpg", faces=[_face({"eyewear": 0.2, "beard": 0.8, "hat": 0.6}, catalog)]), catalog)
    assert r.top_label == "beard" and r.recommendation["label"] == "beard"
    assert summarise_image(ImageResult("b.jpg"), catalog).reason == NO_FACE
    r = summarise_image(ImageResult("c.jpg", faces=[_face({"eyewear": 0.1, "beard": 0.1, "hat": 0.1}, catalog)]), catalog)
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


def test_every_passing_label_gets_a_product_before_seconds(catalog):
    ranked = catalog.rank({"eyewear": 0.55, "beard": 0.95, "hat": 0.1}, THRESHOLDS, limit=3)
    assert [r["label"] for r in ranked] == ["beard", "eyewear", "beard"]
