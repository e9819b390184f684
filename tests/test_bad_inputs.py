"""A corpus of bad and awkward inputs, made here in tmp_path, run through the real client.

Every input gets exactly one JSONL record: a correct result, or an error whose
kind and message name the reason. The batch never stops for a bad file.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from face2hbe.client import Recommender
from face2hbe.client.recommend import Limits, find_inputs
from face2hbe.errors import BadImageError
from face2hbe.imaging import load_rgb

from conftest import SAMPLES

RUNNING_AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# --- corpus makers ---------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png_bytes(side: int = 20_000, garbage: bool = False) -> bytes:
    """A 1-bit side x side PNG of zeros (~50 kB for 20000), compressed row by row in O(row) memory.

    With `garbage` the pixel data is not zlib at all: a header that claims more than it holds (a few bytes).
    """
    raw_row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"garbage" if garbage else b"".join(comp.compress(raw_row) for _ in range(side)) + comp.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def make_bomb_png(path: Path, side: int = 20_000, garbage: bool = False) -> Path:
    """bomb_png_bytes written to `path`."""
    path.write_bytes(bomb_png_bytes(side, garbage))
    return path


def _face() -> Image.Image:
    """Grace Hopper at half size (300x256): one clear face, quick to detect."""
    with Image.open(SAMPLES / "grace_hopper.jpg") as im:
        return im.convert("RGB").resize((256, 300))


def make_crowd(path: Path, grid: int = 6, tile: int = 130, quality: int = 92) -> Path:
    """A grid x grid mosaic of one real face (36 faces), made in memory."""
    with Image.open(SAMPLES / "grace_hopper.jpg") as im:
        face = im.convert("RGB").crop((87, 46, 459, 418)).resize((tile, tile))  # the face with a margin
    mosaic = Image.new("RGB", (grid * tile, grid * tile))
    for i in range(grid * grid):
        mosaic.paste(face, ((i % grid) * tile, (i // grid) * tile))
    mosaic.save(path, quality=quality)
    return path


def make_exif_rotated(path: Path) -> Path:
    """The face stored lying on its side, with EXIF orientation 6 ('rotate 90 CW to display')."""
    stored = _face().rotate(90, expand=True)  # pixels turned 90 CCW
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(path, exif=exif.tobytes(), quality=95)
    return path


def build_corpus(root: Path) -> dict[str, dict]:
    """Write the corpus under root; return {file name: expectation}."""
    root.mkdir()
    face = _face()
    expect: dict[str, dict] = {}

    def bad(name, *fragments):
        expect[name] = {"error": "bad_image", "fragments": fragments}

    def good(name, width, height, min_faces=1, **extra):
        expect[name] = {"error": None, "width": width, "height": height, "min_faces": min_faces, **extra}

    (root / "empty.jpg").write_bytes(b"")
    bad("empty.jpg", "empty file")

    buf = io.BytesIO()
    face.save(buf, "JPEG", quality=90)
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    bad("truncated.jpg", "corrupt or truncated")

    buf = io.BytesIO()
    face.save(buf, "PNG")
    data = bytearray(buf.getvalue())
    start = data.find(b"IDAT") + 200
    data[start : start + 64] = bytes(b ^ 0xFF for b in data[start : start + 64])  # flip bytes inside IDAT
    (root / "corrupt.png").write_bytes(bytes(data))
    bad("corrupt.png", "corrupt or truncated")

    (root / "text.jpg").write_text("this is a shopping list, not a photo\n" * 20)
    bad("text.jpg", "not a recognised image format")

    make_bomb_png(root / "bomb.png")
    bad("bomb.png", "above the 50000000-pixel limit")

    face.convert("CMYK").save(root / "cmyk.jpg", quality=95)
    good("cmyk.jpg", 256, 300)
    rgba = face.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(root / "rgba.png")
    good("rgba.png", 256, 300)
    face.convert("P", palette=Image.ADAPTIVE, colors=128).save(root / "palette.png")
    good("palette.png", 256, 300)
    gray16 = (np.asarray(face.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(root / "gray16.png")
    assert Image.open(root / "gray16.png").mode.startswith("I")  # really 16-bit on disk
    good("gray16.png", 256, 300)
    face.convert("L").save(root / "gray.jpg", quality=95)
    good("gray.jpg", 256, 300)

    make_exif_rotated(root / "exif_rotated.jpg")
    good("exif_rotated.jpg", 256, 300)  # upright size, face found = orientation respected

    other = Image.new("RGB", face.size, (30, 120, 200))
    face.save(root / "animated.gif", save_all=True, append_images=[other, other], duration=100, loop=0)
    good("animated.gif", 256, 300)  # first frame (the face) is used

    (root / "no_face.jpg").symlink_to(SAMPLES / "no_face_china.jpg")
    with Image.open(SAMPLES / "no_face_china.jpg") as im:
        good("no_face.jpg", im.width, im.height, min_faces=0, reason="no face detected")

    make_crowd(root / "crowd.jpg")
    good("crowd.jpg", 780, 780, min_faces=5, faces=5, min_faces_total=30)

    (root / "dangling.jpg").symlink_to(root / "does-not-exist.jpg")
    bad("dangling.jpg", "cannot read file", "No such file")

    os.mkfifo(root / "fifo.jpg")  # would block a reader forever
    bad("fifo.jpg", "not a regular file")

    locked = root / "locked.jpg"
    face.save(locked, quality=90)
    locked.chmod(0)
    if RUNNING_AS_ROOT:  # root reads mode-000 files, so this one is simply a good photo here
        good("locked.jpg", 256, 300)
    else:
        bad("locked.jpg", "permission denied")

    (root / "loop").symlink_to(root, target_is_directory=True)  # a directory loop: never followed
    return expect


# --- the corpus through the real client ------------------------------------------------


@pytest.fixture(scope="module")
def corpus_run(grpc_url, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad") / "corpus"
    expect = build_corpus(root)
    out = root.parent / "results.jsonl"
    summary = Recommender(url=grpc_url, workers=2, limits=Limits(max_faces=5)).run([root], out, progress=False)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return root, expect, records, summary


def test_one_record_per_input_and_batch_goes_on(corpus_run):
    root, expect, records, summary = corpus_run
    names = [Path(r["path"]).name for r in records]
    assert sorted(names) == sorted(expect), "exactly one record per input file"
    assert summary.images == len(expect) and summary.outage is None and summary.not_processed == 0
    assert not any("loop" in Path(r["path"]).parts for r in records), "the directory loop was followed"


@pytest.mark.parametrize(
    "name",
    [
        "empty.jpg",
        "truncated.jpg",
        "corrupt.png",
        "text.jpg",
        "bomb.png",
        "dangling.jpg",
        "fifo.jpg",
    ],
)
def test_bad_file_gets_one_line_error_naming_the_reason(corpus_run, name):
    _, expect, records, _ = corpus_run
    record = next(r for r in records if Path(r["path"]).name == name)
    error = record["error"]
    assert error is not None and error["kind"] == expect[name]["error"], record
    assert "\n" not in error["message"]
    for fragment in expect[name]["fragments"]:
        assert fragment in error["message"], error["message"]
    assert record["faces"] == [] and record["recommendation"] is None


@pytest.mark.parametrize(
    "name",
    [
        "cmyk.jpg",
        "rgba.png",
        "palette.png",
        "gray16.png",
        "gray.jpg",
        "exif_rotated.jpg",
        "animated.gif",
        "no_face.jpg",
        "crowd.jpg",
        "locked.jpg",
    ],
)
def test_awkward_but_valid_file_gets_a_result(corpus_run, name):
    _, expect, records, _ = corpus_run
    want = expect[name]
    if want["error"]:
        pytest.skip(f"{name} is an error case when not running as root")
    record = next(r for r in records if Path(r["path"]).name == name)
    assert record["error"] is None, record["error"]
    assert (record["width"], record["height"]) == (want["width"], want["height"])
    assert len(record["faces"]) >= want["min_faces"], f"{name}: {len(record['faces'])} faces"
    if "reason" in want:
        assert record["reason"] == want["reason"]
    if "faces" in want:  # the max-faces limit: the rest are counted, not scored
        assert len(record["faces"]) == want["faces"]
        assert record["faces_total"] >= want["min_faces_total"]
    for face in record["faces"]:
        assert all(0.0 <= s <= 1.0 for s in face["scores"].values())


def test_exif_rotation_is_what_makes_the_face_findable(tmp_path):
    """Guard for the corpus: without applying EXIF the stored pixels show no upright face.

    Checked with HOG, which finds upright faces only: the default BlazeFace's retry on a padded copy may
    also find the face lying on its side, so it cannot tell.
    """
    from face2hbe.detection import DetectorSettings, detect_faces

    path = make_exif_rotated(tmp_path / "r.jpg")
    with Image.open(path) as im:
        stored = np.asarray(im.convert("RGB"))
    assert stored.shape == (256, 300, 3) and detect_faces(stored, DetectorSettings(model="hog")) == []
    assert len(detect_faces(load_rgb(path))) == 1


def test_bomb_is_refused_before_decoding(tmp_path):
    import tracemalloc

    path = make_bomb_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(BadImageError, match=r"above the 50000000-pixel limit$") as caught:
            load_rgb(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "100000000" not in str(caught.value)  # one limit named, not two that contradict each other
    assert peak < 20 * 1024 * 1024  # decoding 400 Mpx would take ~400 MB: refused from the header alone


def test_pixel_limit_flag_above_pillow_default_is_honoured(tmp_path):
    """--max-pixels larger than Pillow's own guard (~89 Mpx) is not overridden by it, and the guard is restored."""
    from PIL import Image as PILImage

    pillow_default = PILImage.MAX_IMAGE_PIXELS
    path = make_bomb_png(tmp_path / "big.png", side=10_000, garbage=True)  # claims 100 Mpx, holds none
    with pytest.raises(BadImageError, match="above the 50000000-pixel limit"):
        load_rgb(path)
    # Allowed by our limit, Pillow opens it and only then finds the data short: not a bomb error.
    with pytest.raises(BadImageError, match="corrupt or truncated"):
        load_rgb(path, max_pixels=120_000_000)
    assert PILImage.MAX_IMAGE_PIXELS == pillow_default


@pytest.mark.skipif(RUNNING_AS_ROOT, reason="root reads mode-000 files, so permission denial cannot happen here")
def test_unreadable_file_says_permission_denied(tmp_path):
    path = tmp_path / "locked.jpg"
    _face().save(path)
    path.chmod(0)
    with pytest.raises(BadImageError, match="permission denied"):
        load_rgb(path)


def test_find_inputs_survives_directory_loops(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    _face().save(tmp_path / "a" / "b" / "x.jpg")
    (tmp_path / "a" / "b" / "up").symlink_to(tmp_path / "a", target_is_directory=True)
    (tmp_path / "a" / "self").symlink_to(tmp_path / "a", target_is_directory=True)
    items = find_inputs([tmp_path / "a", tmp_path / "a" / "self"])
    assert [p.name for p, _ in items] == ["x.jpg", "x.jpg"]  # once per argument, no recursion through links


# --- limits through the CLI --------------------------------------------------------------


def test_limit_flags_trigger(grpc_url, tmp_path, capsys):
    """--max-file-mb, --max-pixels and --max-faces each produce their own result."""
    from face2hbe.app.cli import main

    big_file = tmp_path / "big_file.jpg"  # ~60 kB
    big_file.symlink_to(SAMPLES / "grace_hopper.jpg")
    many_pixels = tmp_path / "many_pixels.png"  # 160,000 px in a few hundred bytes
    Image.new("L", (400, 400), 90).save(many_pixels, optimize=True)
    crowd = make_crowd(tmp_path / "crowd.jpg", grid=4, tile=100, quality=70)  # 16 faces, 160,000 px
    ok = tmp_path / "ok.jpg"
    _face().resize((128, 150)).save(ok, quality=85)  # 19,200 px, a few kB
    out = tmp_path / "out.jsonl"
    code = main(
        [
            "recommend",
            str(big_file),
            str(many_pixels),
            str(crowd),
            str(ok),
            "--url",
            grpc_url,
            "--output",
            str(out),
            "--max-file-mb",
            "0.05",
            "--max-pixels",
            "170000",
            "--max-faces",
            "2",
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    records = {Path(r["path"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(records) == {"big_file.jpg", "many_pixels.png", "crowd.jpg", "ok.jpg"}
    assert records["big_file.jpg"]["error"]["kind"] == "bad_image"
    assert "above the 52428-byte limit" in records["big_file.jpg"]["error"]["message"]
    assert records["ok.jpg"]["error"] is None and len(records["ok.jpg"]["faces"]) == 1
    crowd_record = records["crowd.jpg"]
    assert crowd_record["error"] is None
    assert len(crowd_record["faces"]) == 2 and crowd_record["faces_total"] >= 10
    assert records["many_pixels.png"]["error"] is None  # 160,000 px is under 170,000
    code = main(
        [
            "recommend",
            str(many_pixels),
            "--url",
            grpc_url,
            "--output",
            str(out),
            "--max-pixels",
            "100000",
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    assert code == 0
    (record,) = map(json.loads, out.read_text().splitlines())
    assert "above the 100000-pixel limit" in record["error"]["message"]
