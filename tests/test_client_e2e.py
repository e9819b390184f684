"""The client end to end on real photos: detection settings, EXIF, thresholds -> SKUs, CSV catalogs."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from face2hbe.client import Recommender
from face2hbe.client.catalog import load_catalog
from face2hbe.detection import DetectorSettings, detect_faces, face_locations
from face2hbe.imaging import load_rgb

from conftest import REPOSITORY, SAMPLES, free_port


def _rows(lfw_dir, n, **where):
    rows = csv.DictReader((lfw_dir / "labels.csv").open())
    return [r for r in rows if all(r[k] == v for k, v in where.items())][:n]


def _centre_found(boxes, size) -> bool:
    return any(
        abs((b.top + b.bottom) / 2 - size / 2) < 0.15 * size and abs((b.left + b.right) / 2 - size / 2) < 0.15 * size
        for b in boxes
    )


def test_detector_gives_face_recognition_boxes(lfw_sample):
    """The detector is loaded without face_recognition's other models but must box exactly as it does."""
    import face_recognition

    for path, _ in lfw_sample:
        image = load_rgb(path)
        for upsample in (0, 1):
            assert face_locations(image, upsample) == face_recognition.face_locations(image, upsample), path.name


def test_downscaled_detection_maps_boxes_back(lfw_sample):
    """A photo upscaled 4x and detected on a copy shrunk back to 250 px: boxes scale by 4 within a few pixels."""
    for path, _ in lfw_sample:
        image = load_rgb(path)
        # upsample=1 on both sides: its finer pyramid keeps HOG's box-size steps below the tolerance.
        (small,) = [
            b for b in detect_faces(image, DetectorSettings(model="hog", upsample=1)) if _centre_found([b], 250)
        ][:1] or [None]
        assert small is not None, f"{path.name}: no centre face at the original size"
        big = np.asarray(Image.fromarray(image).resize((1000, 1000), Image.BICUBIC))
        found = detect_faces(big, DetectorSettings(model="hog", max_side=250, upsample=1))
        assert found, f"{path.name}: no face in the 4x copy"
        nearest = min(found, key=lambda b: sum(abs(x - 4 * y) for x, y in zip(b.as_list(), small.as_list())))
        assert np.abs(np.array(nearest.as_list()) - 4 * np.array(small.as_list())).max() <= 8, (
            path.name,
            nearest,
            small,
        )


def test_min_face_drops_smaller_boxes(lfw_sample):
    image = load_rgb(lfw_sample[0][0])
    boxes = detect_faces(image, DetectorSettings(min_face=1))
    assert boxes
    smallest = min(min(b.width, b.height) for b in boxes)
    assert len(detect_faces(image, DetectorSettings(min_face=smallest + 1))) < len(boxes)
    assert detect_faces(image, DetectorSettings(min_face=max(max(b.width, b.height) for b in boxes) + 1)) == []


def test_upsample_finds_smaller_faces(lfw_dir):
    """LFW photos halved to 125 px hold ~55 px faces: below HOG's 80 px window without up-sampling."""
    halves = [
        np.asarray(Image.fromarray(load_rgb(lfw_dir / r["path"])).resize((125, 125), Image.BILINEAR))
        for r in _rows(lfw_dir, 8)
    ]
    found = {
        up: sum(
            _centre_found(
                detect_faces(img, DetectorSettings(model="hog", upsample=up, retry_upsample=0, min_face=1)), 125
            )
            for img in halves
        )
        for up in (0, 1)
    }
    assert found[1] >= 7 and found[0] < found[1], found


def test_exif_orientation_is_respected_end_to_end(grpc_url, lfw_sample, tmp_path):
    """A photo stored sideways with EXIF orientation 6 is boxed in the upright frame."""
    path = lfw_sample[0][0]
    upright = Image.open(path).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    sideways = tmp_path / "sideways.jpg"
    upright.transpose(Image.Transpose.ROTATE_90).save(sideways, quality=95, exif=exif)
    with Recommender(url=grpc_url) as rec:
        expected = rec.recommend(path)
        got = rec.recommend(sideways)
    assert (got.width, got.height) == (250, 250)
    assert len(got.faces) == len(expected.faces) >= 1
    for a, b in zip(got.faces, expected.faces):
        assert np.abs(np.array(a.box) - np.array(b.box)).max() <= 6, (a.box, b.box)


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory):
    """The same model served with an eyewear threshold no score can reach (1.01)."""
    import json

    from face2hbe.export.repository import write_config
    from face2hbe.repository import read_config
    from face2hbe.serving.embedded import EmbeddedServer, ServerSettings

    repo = tmp_path_factory.mktemp("strict_repository")
    source = REPOSITORY / "face2hbe"
    model_dir = repo / "face2hbe"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.onnx").symlink_to((source / "1" / "model.onnx").resolve())
    shutil.copy(source / "labels.txt", model_dir / "labels.txt")
    config = read_config(source)
    thresholds = json.loads(config.parameters["thresholds"].string_value)
    thresholds["eyewear"] = 1.01
    config.parameters["thresholds"].string_value = json.dumps(thresholds)
    write_config(config, model_dir)
    settings = ServerSettings(
        repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), precision="fp32", photo=False
    )
    with EmbeddedServer(settings) as srv:
        yield srv


def _eyewear_faces(url, lfw_dir):
    """(eyewear score, server threshold, SKU labels) for every face in LFW photos labelled with eyewear."""
    photos = [lfw_dir / r["path"] for r in _rows(lfw_dir, 6, eyewear="1")]
    catalog = load_catalog()
    with Recommender(url=url, catalog=catalog, skus_per_face=len(catalog.products)) as rec:
        results = [rec.recommend(p) for p in photos]
        threshold = rec.model_info.thresholds["eyewear"]
    faces = [(f.scores["eyewear"], threshold, {s["label"] for s in f.skus}) for r in results for f in r.faces]
    assert faces, "no faces found in the eyewear photos"
    return faces


def test_glasses_yield_an_eyewear_sku_exactly_when_the_score_passes(grpc_url, lfw_dir):
    faces = _eyewear_faces(grpc_url, lfw_dir)
    for score, threshold, labels in faces:
        assert ("eyewear" in labels) == (score >= threshold), (score, threshold, labels)
    # Photos of people in glasses: the served model must pass at least one of them.
    assert any("eyewear" in labels for _, _, labels in faces), faces


def test_no_eyewear_sku_below_the_served_threshold(strict_server, lfw_dir):
    """Thresholds come from the server: with 1.01 served, no face may get an eyewear product."""
    faces = _eyewear_faces(f"127.0.0.1:{strict_server.settings.grpc_port}", lfw_dir)
    assert all(threshold == 1.01 for _, threshold, _ in faces)
    assert not any("eyewear" in labels for _, _, labels in faces), faces


def test_csv_catalog_drives_recommendations(grpc_url, tmp_path):
    catalog = tmp_path / "shop.csv"
    catalog.write_text(
        "sku,label,name,price,url,min_score,priority\n"
        'X-1,eyewear,"Frames, round",10,,,\n'
        "X-2,beard,Oil,5,https://shop.example/x2,,2\n"
        "X-3,hat,Cap,7,,0.0,\n"
    )
    loaded = load_catalog(catalog, labels=["eyewear", "beard", "hat"])
    assert [p.sku for p in loaded.products] == ["X-1", "X-2", "X-3"]
    assert loaded.products[0].name == "Frames, round" and loaded.products[1].priority == 2.0
    with Recommender(url=grpc_url, catalog=catalog, skus_per_face=3) as rec:
        result = rec.recommend(load_rgb(REPOSITORY.parent / "client" / "samples" / "grace_hopper.jpg"), name="hopper")
    skus = {s["sku"] for f in result.faces for s in f.skus}
    assert skus and skus <= {"X-1", "X-2", "X-3"}


def test_csv_catalog_errors_name_file_and_row(tmp_path):
    from face2hbe.errors import CatalogError

    bad = tmp_path / "bad.csv"
    bad.write_text("sku,label,name\nX-1,eyewear,Frames\n")
    with pytest.raises(CatalogError, match=r"bad.csv: product #1 lacks price"):
        load_catalog(bad)
    bad.write_text("sku,label,name,price,colour\nX-1,eyewear,Frames,3,red\n")
    with pytest.raises(CatalogError, match=r"bad.csv.*unknown fields \['colour'\]"):
        load_catalog(bad)
    bad.write_text("sku,label,name,price\nX-1,eyewear,Frames,cheap\n")
    with pytest.raises(CatalogError, match=r"bad.csv: product 'X-1'"):
        load_catalog(bad)


def test_e2e_bench_reports_both_rates(grpc_url, lfw_dir):
    """The end-to-end benchmark's function on a few photos against the live server (figures: docs/client.md)."""
    from face2hbe.loadtest.bench.e2e import run_e2e_bench

    result = run_e2e_bench(photos=6, url=grpc_url, workers=1, lfw_dir=lfw_dir)  # skips without LFW, like its siblings
    assert result["photos"] == 6 and result["faces"] >= 5 and result["errors"] == 0
    assert result["model_only_faces_per_s"] > 0 and result["e2e_faces_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["e2e_faces_per_s"] / result["model_only_faces_per_s"], rel=0.01)
    assert result["e2e_client_cpu_ms_per_photo"] > 0


@pytest.mark.slow  # spawns worker processes for two of its four variants
def test_pool_bench_runs_every_variant(grpc_url, lfw_dir):
    """loadtest/bench/pool.py: the old process pool (its workers import the bench, not this test) and the threads, same faces."""
    from face2hbe.loadtest.bench.pool import markdown, run_pool_bench, variants

    result = run_pool_bench(photos=4, rounds=1, lfw_dir=lfw_dir, url=grpc_url)
    assert [row["variant"] for row in result["table"]] == [name for name, *_ in variants()]
    assert len({run["faces"] for run in result["runs"]}) == 1 and all(run["errors"] == 0 for run in result["runs"])
    assert all(row["e2e_client_cpu_ms_per_photo"] > 0 for row in result["table"])
    assert markdown(result).count("\n") == len(result["table"]) + 1


def test_small_faces_found_by_the_retry_pass(celeba_dir):
    """CelebA's 89x109 crops hide their face from HOG without up-sampling; HOG's default second look finds it."""
    images = [load_rgb(celeba_dir / "images" / f"{i:06d}.jpg") for i in range(1, 11)]
    once = sum(
        bool(detect_faces(img, DetectorSettings(model="hog", upsample=0, retry_upsample=0, min_face=8)))
        for img in images
    )
    with_retry = sum(bool(detect_faces(img, DetectorSettings(model="hog", min_face=8))) for img in images)
    assert once <= 2 and with_retry >= 8, (once, with_retry)


def test_weak_hog_hits_are_dropped():
    """The astronaut portrait has one face; HOG's default threshold also fires (score ~0.1) on her suit's patch."""
    image = load_rgb(SAMPLES / "astronaut_eileen_collins.jpg")
    assert len(detect_faces(image, DetectorSettings(model="hog", min_score=0.0))) == 2
    (face,) = detect_faces(image, DetectorSettings(model="hog"))
    assert face.top < 200  # the face, not the patch at y ~ 330-420
