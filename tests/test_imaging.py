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


# exif_transpose's turn for each orientation, inverted: the stored pixels that display as the upright image.
_STORED = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def _jpeg(upright: np.ndarray, orientation: int = 1, mode: str = "RGB") -> bytes:
    """JPEG bytes (quality 95) that display as the RGB array `upright`, stored as a camera with `orientation` stores them."""
    image = Image.fromarray(upright)
    if orientation != 1:
        image = image.transpose(_STORED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.convert(mode).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def _scene(height: int, width: int) -> np.ndarray:
    """A smooth picture with a landmark in each quadrant, so a wrong turn or shift shows in any crop."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([x / width * 200, y / height * 200, 100 + 60 * np.sin(x / 37.0) * np.cos(y / 53.0)], axis=-1)
    for (cy, cx), colour in zip(
        [(0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.7, 0.7)], [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    ):
        r = int(0.08 * min(height, width))
        image[int(cy * height) - r : int(cy * height) + r, int(cx * width) - r : int(cx * width) + r] = colour
    return np.clip(image, 0, 255).astype(np.uint8)


def test_full_decode_is_pillow_s_upright_rgb():
    """decode_rgb (now through decode_photo, no copies) gives what Pillow's plain exif_transpose + convert gives."""
    from PIL import ImageOps

    from face2hbe.imaging import decode_photo, decode_rgb

    for orientation in (1, 6):
        for mode in ("RGB", "L", "CMYK"):
            data = _jpeg(_scene(61, 83), orientation, mode)
            want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
            np.testing.assert_array_equal(decode_rgb(data), want)
            assert decode_photo(data, max_side=None).scale == 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_reduced_decode_keeps_orientation_size_and_framing(orientation):
    """A 2003x1501 JPEG (not a multiple of 8) in every EXIF orientation: decoded at 1/4 for a 400 px detection copy,
    the full upright size, the detection copy and the crops agree with the full decode's."""
    from face2hbe.detection import face_crops
    from face2hbe.imaging import decode_photo, decode_rgb

    upright = _scene(1501, 2003)
    data = _jpeg(upright, orientation)
    full = decode_rgb(data)
    reduced = decode_photo(data, max_side=400)
    assert reduced.scale == 4 and reduced.shape == full.shape == upright.shape
    size = (400, round(1501 * 400 / 2003))
    detection_copy = np.asarray(Image.fromarray(full).resize(size, Image.BILINEAR), dtype=np.int16)
    assert np.abs(reduced.resized(size) - detection_copy).mean() < 1.5
    boxes = [
        Box(
            top=100, right=1000, bottom=800, left=300
        ),  # crop side 1260 = 315 px of the 1/4 copy: cut from it, past the top
        Box(top=700, right=1950, bottom=1450, left=1200),  # from the 1/4 copy too, past the bottom and right edges
        Box(top=1200, right=1450, bottom=1300, left=1350),
    ]  # small: cut from a full-resolution decode
    want = face_crops(full, boxes).astype(np.int16)
    got = reduced.crops(boxes)
    assert got.shape == want.shape and got.dtype == np.uint8
    # 0.5 at most; a mis-turned crop differs by tens, one 3 px off (the partial DCT block of a flipped side) by 0.9-1.0
    assert np.abs(got - want).mean(axis=(1, 2, 3)).max() < 0.75
    np.testing.assert_array_equal(got[2], want[2])  # the full-resolution second look is the full decode's crop exactly


def test_second_look_decodes_at_the_coarsest_scale_that_suffices():
    from face2hbe.imaging import MIN_CROP_SIDE, crop_box, decode_photo

    data = _jpeg(_scene(3000, 4000))
    reduced = decode_photo(data, max_side=800)
    assert reduced.scale == 4 and reduced.image.size == (1000, 750)
    big = Box(top=400, right=1400, bottom=1400, left=400)  # crop side 1800 full px = 450 at 1/4: from this copy
    middle = Box(top=1500, right=2400, bottom=1900, left=2000)  # 720 full px: 180 at 1/4, 360 at 1/2
    assert crop_box(big, 3000, 4000)[2] >= 4 * MIN_CROP_SIDE > crop_box(middle, 3000, 4000)[2] >= 2 * MIN_CROP_SIDE
    half = decode_photo(data, scale=2)
    assert half.scale == 2 and half.image.size == (2000, 1500)
    crops = reduced.crops([big, middle])
    np.testing.assert_array_equal(crops[0], reduced.crops([big])[0])
    np.testing.assert_array_equal(crops[1], half.crops([middle])[0])


def test_small_photos_and_other_formats_are_decoded_whole():
    """At most max_side, or not a JPEG: full resolution, and crops and detection copy are the array path's to the bit."""
    from face2hbe.detection import face_crops
    from face2hbe.imaging import decode_photo, decode_rgb

    scene = _scene(1100, 1500)
    buf = io.BytesIO()
    Image.fromarray(scene).save(buf, "PNG")
    cases = [(buf.getvalue(), 800), (_jpeg(scene), 800), (_jpeg(scene[:500, :700]), 800), (_jpeg(scene), None)]
    cases.append((_jpeg(scene), 1000))  # 1500 // 2 < 1000: no DCT scale keeps the detection size
    box = Box(top=200, right=480, bottom=500, left=180)
    for data, max_side in cases:
        photo = decode_photo(data, max_side=max_side)
        full = decode_rgb(data)
        assert photo.scale == 1 and photo.shape == full.shape
        np.testing.assert_array_equal(photo.crops([box]), face_crops(full, [box]))
        np.testing.assert_array_equal(photo.resized((full.shape[1], full.shape[0])), full)


def test_a_phone_s_mpo_is_decoded_reduced_from_its_first_frame():
    from face2hbe.imaging import decode_photo, decode_rgb

    scene = Image.fromarray(_scene(1600, 2400))
    buf = io.BytesIO()
    scene.save(buf, "MPO", save_all=True, append_images=[scene.resize((240, 160))])
    photo = decode_photo(buf.getvalue(), max_side=600)
    assert photo.scale == 4 and photo.shape == decode_rgb(buf.getvalue()).shape == (1600, 2400, 3)
