"""Image loading and face cropping shared by training and the client.

The crop function is the same at training and at serving time so the model sees
the same framing in both places.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from .contract import INPUT_SIZE
from .errors import BadImageError

DEFAULT_MAX_PIXELS = 50_000_000  # ~7000x7000; also set as Pillow's bomb-guard limit
DEFAULT_MAX_FILE_BYTES = 50 * 1024 * 1024

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


def load_rgb(
    path: str | os.PathLike,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> np.ndarray:
    """Read an image file as an upright 8-bit RGB array, or raise BadImageError.

    Handles EXIF orientation, CMYK, palette, RGBA (composited on white),
    grayscale and 16-bit images; animated images use their first frame.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BadImageError(path, f"cannot read file ({exc.strerror or exc})") from None
    if path.is_dir():
        raise BadImageError(path, "is a directory")
    if not path.is_file():  # a FIFO or device named *.jpg would block or never end on read
        raise BadImageError(path, "not a regular file")
    if size == 0:
        raise BadImageError(path, "empty file (0 bytes)")
    if size > max_file_bytes:
        raise BadImageError(path, f"file is {size} bytes, above the {max_file_bytes}-byte limit")
    return _decode(path, path, max_pixels)


def decode_rgb(
    data: bytes,
    name: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> np.ndarray:
    """`load_rgb` for an image's bytes already in memory (read from any filesystem); `name` names it in errors."""
    import io

    if len(data) == 0:
        raise BadImageError(name, "empty file (0 bytes)")
    if len(data) > max_file_bytes:
        raise BadImageError(name, f"file is {len(data)} bytes, above the {max_file_bytes}-byte limit")
    return _decode(io.BytesIO(data), name, max_pixels)


def _decode(source, path, max_pixels: int) -> np.ndarray:
    """Open `source` (a path or a binary file object) as upright RGB; errors name `path`."""
    # face_recognition sets this global to True on import; a truncated file must fail here.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    # Pillow's bomb guard (process-wide) follows our limit while we open, so a larger
    # --max-pixels is honoured and a smaller one refuses before any decoding.
    pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                pixels = im.width * im.height
                if pixels > max_pixels:
                    raise BadImageError(
                        path, f"image is {im.width}x{im.height} pixels, above the {max_pixels}-pixel limit"
                    )
                im.seek(0)
                im = ImageOps.exif_transpose(im)
                return _to_rgb_array(im)
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError(path, f"image is above the {max_pixels}-pixel limit (decompression bomb guard: {exc})") from None
    except Image.UnidentifiedImageError:
        raise BadImageError(path, "not a recognised image format") from None
    except PermissionError as exc:  # before OSError, its base class
        raise BadImageError(path, f"permission denied ({exc.strerror or exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(path, f"corrupt or truncated image ({exc})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit


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
