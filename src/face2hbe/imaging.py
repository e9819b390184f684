"""Image loading and face cropping shared by training and the client.

The crop function is the same at training and at serving time so the model sees
the same framing in both places.
"""
from __future__ import annotations

import contextlib
import io
import os
import stat
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps

from .contract import INPUT_SIZE
from .errors import BadImageError

DEFAULT_MAX_PIXELS = 50_000_000  # ~7000x7000
DEFAULT_MAX_FILE_BYTES = 50 * 1024 * 1024

# File name suffixes taken as photos when a folder is searched (case-insensitive).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".heic", ".heif"})

# Crop framing around a face_recognition box (which runs from brows to chin):
# a square `CROP_SCALE` times the box side, lifted by `CROP_LIFT` box heights so
# a hat above the forehead and a beard below the chin both stay inside.
CROP_SCALE = 1.8
CROP_LIFT = 0.15


@dataclass(frozen=True)
class Box:
    """A face box in pixel coordinates of the full image (face_recognition order)."""

    top: int
    right: int
    bottom: int
    left: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    def as_list(self) -> list[int]:
        return [self.top, self.right, self.bottom, self.left]


def _register_heif() -> bool:
    """Let Pillow open HEIC/HEIF (pillow-heif), once per process; False when pillow-heif is missing."""
    global _HEIF
    if _HEIF is None:
        try:
            from pillow_heif import register_heif_opener
        except ImportError:
            _HEIF = False
        else:
            register_heif_opener()
            _HEIF = True
    return _HEIF


_HEIF: bool | None = None


def read_image_file(path: str | os.PathLike, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The bytes of an image file, or BadImageError.

    The file is opened non-blocking and the open descriptor checked to be a regular file,
    so a FIFO or device swapped in under an image's name can neither block nor stream forever.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except IsADirectoryError:
        raise BadImageError(path, "is a directory") from None
    except PermissionError as exc:
        raise BadImageError(path, f"permission denied ({exc.strerror or exc})") from None
    except OSError as exc:
        raise BadImageError(path, f"cannot read file ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if stat.S_ISDIR(info.st_mode):
            raise BadImageError(path, "is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise BadImageError(path, "not a regular file")
        if info.st_size == 0:
            raise BadImageError(path, "empty file (0 bytes)")
        if info.st_size > max_file_bytes:
            raise BadImageError(path, f"file is {info.st_size} bytes, above the {max_file_bytes}-byte limit")
        try:
            data = f.read(info.st_size + 1)  # not max_file_bytes: read() allocates what it is asked for
        except OSError as exc:
            raise BadImageError(path, f"cannot read file ({exc.strerror or exc})") from None
    if len(data) > info.st_size:  # it grew after fstat: what we have is not the whole file
        raise BadImageError(path, "file grew while being read")
    return data


def load_rgb(
    path: str | os.PathLike,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> np.ndarray:
    """Read an image file as an upright 8-bit RGB array, or raise BadImageError.

    Handles EXIF orientation, CMYK, palette, RGBA (composited on white),
    grayscale and 16-bit images, HEIC/HEIF; animated images use their first frame.
    """
    return decode_rgb(read_image_file(path, max_file_bytes), path, max_pixels, max_file_bytes)


@contextlib.contextmanager
def _opened(data: bytes, name, max_pixels: int, max_file_bytes: int):
    """The image in `data`, opened after the size checks and with its pixel count checked from the header;
    every failure inside (opening, or decoding in the caller's block) becomes BadImageError naming `name`."""
    if len(data) == 0:
        raise BadImageError(name, "empty file (0 bytes)")
    if len(data) > max_file_bytes:
        raise BadImageError(name, f"file is {len(data)} bytes, above the {max_file_bytes}-byte limit")
    _register_heif()
    # face_recognition sets this global to True on import; a truncated file must fail here.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > max_pixels:
                raise BadImageError(name, f"image is {im.width}x{im.height} pixels, above the {max_pixels}-pixel limit")
            yield im
    except BadImageError:
        raise
    except Image.DecompressionBombError:  # raised by Image.open above 2x Image.MAX_IMAGE_PIXELS, before our own check
        pillow_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        if max_pixels < pillow_limit:
            raise BadImageError(name, f"image is above the {max_pixels}-pixel limit") from None
        raise BadImageError(name, f"image is above Pillow's decompression-bomb limit of {pillow_limit} pixels "
                                  "(PIL.Image.MAX_IMAGE_PIXELS)") from None
    except Image.UnidentifiedImageError:
        raise BadImageError(name, "not a recognised image format" + ("" if _register_heif() else " (HEIC needs pillow-heif)")) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImageError(name, f"corrupt or truncated image ({' '.join(str(exc).split())[:200]})") from None


def decode_rgb(data: bytes, name: str | os.PathLike = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS,
               max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> np.ndarray:
    """Decode encoded image bytes (read from any filesystem) as an upright 8-bit RGB array, or raise BadImageError naming `name`.

    The pixel count is checked from the header, before any pixel is decoded. Pillow's own
    process-wide bomb guard (Image.MAX_IMAGE_PIXELS) is left as the application set it.
    """
    with _opened(data, name, max_pixels, max_file_bytes) as im:
        im.seek(0)
        return _to_rgb_array(ImageOps.exif_transpose(im))


def photo_size(data: bytes, name: str | os.PathLike = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS,
               max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> tuple[int, int]:
    """(width, height) of encoded image bytes as `decode_rgb` would return them (EXIF-rotated), from the header only.

    The same checks as decode_rgb's before decoding (size, pixel count, format); no pixel is decoded,
    so a corrupt body is found only by whoever decodes it (the photo model, with server-side detection).
    """
    with _opened(data, name, max_pixels, max_file_bytes) as im:
        width, height = im.size
        orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)  # 90/270-degree EXIF rotations


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits by the actual range of the format.
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=-1)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(arr)


def crop_box(box: Box, image_height: int, image_width: int) -> tuple[int, int, int, int]:
    """The square region (top, left, side, side) that `crop_face` cuts for `box`.

    May extend past the image border; `crop_face` pads those parts with black.
    """
    side = int(round(CROP_SCALE * max(box.width, box.height)))
    center_y = (box.top + box.bottom) / 2.0 - CROP_LIFT * box.height
    center_x = (box.left + box.right) / 2.0
    top = int(round(center_y - side / 2.0))
    left = int(round(center_x - side / 2.0))
    return top, left, side, side


def crop_face(image: np.ndarray, box: Box, size: int = INPUT_SIZE) -> np.ndarray:
    """Cut the framed square around `box` out of `image` and resize it to size x size."""
    height, width = image.shape[:2]
    top, left, side, _ = crop_box(box, height, width)
    canvas = np.zeros((side, side, 3), dtype=np.uint8)
    src_top, src_left = max(top, 0), max(left, 0)
    src_bottom, src_right = min(top + side, height), min(left + side, width)
    if src_bottom > src_top and src_right > src_left:
        canvas[src_top - top : src_bottom - top, src_left - left : src_right - left] = image[
            src_top:src_bottom, src_left:src_right
        ]
    return np.asarray(Image.fromarray(canvas).resize((size, size), Image.BILINEAR), dtype=np.uint8)
