"""Loading every kind of image file, and the shared face crop."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from face2hbe.errors import BadImageError
from face2hbe.imaging import Box, crop_box, crop_face, load_rgb


def _save(tmp_path, name, image, **kw):
    path = tmp_path / name
    image.save(path, **kw)
    return path


@pytest.mark.parametrize(
    "name, make",
    [
        ("cmyk.jpg", lambda: Image.new("CMYK", (40, 30), (0, 255, 255, 0))),
        ("rgba.png", lambda: Image.new("RGBA", (40, 30), (255, 0, 0, 128))),
        ("palette.png", lambda: Image.new("RGB", (40, 30), (255, 0, 0)).convert("P")),
        ("gray.png", lambda: Image.new("L", (40, 30), 128)),
        ("gray16.png", lambda: Image.fromarray(np.full((30, 40), 40000, np.uint16))),
    ],
)
def test_modes_become_rgb_uint8(tmp_path, name, make):
    arr = load_rgb(_save(tmp_path, name, make()))
    assert arr.shape == (30, 40, 3) and arr.dtype == np.uint8


def test_16_bit_is_scaled_not_clipped(tmp_path):
    arr = load_rgb(_save(tmp_path, "g16.png", Image.fromarray(np.full((4, 4), 32768, np.uint16))))
    assert 120 <= arr[0, 0, 0] <= 135


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (60, 20), (0, 0, 255))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes())
    assert load_rgb(path).shape == (60, 20, 3)


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.jpg", b"", "empty file"),
        ("text.jpg", b"hello, I am not a picture\n" * 10, "not a recognised image format"),
    ],
)
def test_bad_files_raise_with_reason(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(BadImageError, match=reason) as info:
        load_rgb(path)
    assert name in str(info.value)


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    with pytest.raises(BadImageError, match="corrupt or truncated"):
        load_rgb(path)


def test_pixel_limit(tmp_path):
    path = _save(tmp_path, "big.png", Image.new("L", (300, 300)))
    with pytest.raises(BadImageError, match="pixel limit"):
        load_rgb(path, max_pixels=10_000)


def test_crop_frames_face_and_pads_outside():
    image = np.full((100, 100, 3), 200, np.uint8)
    box = Box(top=10, right=60, bottom=50, left=20)  # near the top edge: the crop reaches above the image
    top, left, side, _ = crop_box(box, 100, 100)
    assert side == 72 and top < 0
    crop = crop_face(image, box, size=150)
    assert crop.shape == (150, 150, 3) and crop.dtype == np.uint8
    assert crop[0, 75].max() == 0  # padded above the image
    assert crop[100, 75].min() == 200  # image content below


@pytest.mark.parametrize("orientation", range(1, 9))
def test_photo_size_reads_the_upright_size_from_the_header(orientation):
    """--detect server reports the size decode_rgb would give, without decoding a pixel."""
    from face2hbe.imaging import decode_rgb, photo_size

    image = Image.new("RGB", (50, 30), (0, 0, 255))
    exif = image.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif.tobytes())
    height, width = decode_rgb(buf.getvalue()).shape[:2]
    assert photo_size(buf.getvalue()) == (width, height)
    with pytest.raises(BadImageError, match="pixel limit"):
        photo_size(buf.getvalue(), "big.jpg", max_pixels=100)
    with pytest.raises(BadImageError, match="not a recognised image format"):
        photo_size(b"not a photo" * 10, "text.jpg")
