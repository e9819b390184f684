"""Image loading and face cropping shared by training and the client.

The crop function is the same at training and at serving time so the model sees
the same framing in both places.
"""

from __future__ import annotations

import contextlib
import io
import math
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

# JPEGs are decoded reduced by libjpeg's DCT scaling (Pillow's Image.draft: 1/2, 1/4 or 1/8 of each side) to the
# coarsest copy whose longer side still reaches the detection size; a face whose framed square covers fewer than
# MIN_CROP_SIDE pixels of that copy is cut from a finer decode (down to full resolution) instead. Twice the crop's
# side: scores then match the full-resolution crop's within 0.005 for 99 % of them (fp32; 0.011 with the crop's own
# side as the bound), against 0.02-0.03 for a box moved by one pixel (docs/benchmarks.md, "Decoding phone photos").
DRAFT_SCALES = (8, 4, 2)
MIN_CROP_SIDE = 2 * INPUT_SIZE


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
        raise BadImageError(
            name,
            f"image is above Pillow's decompression-bomb limit of {pillow_limit} pixels (PIL.Image.MAX_IMAGE_PIXELS)",
        ) from None
    except Image.UnidentifiedImageError:
        raise BadImageError(
            name, "not a recognised image format" + ("" if _register_heif() else " (HEIC needs pillow-heif)")
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImageError(name, f"corrupt or truncated image ({' '.join(str(exc).split())[:200]})") from None


def decode_rgb(
    data: bytes,
    name: str | os.PathLike = "<bytes>",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> np.ndarray:
    """Decode encoded image bytes (read from any filesystem) as an upright 8-bit RGB array, or raise BadImageError naming `name`.

    The pixel count is checked from the header, before any pixel is decoded. Pillow's own
    process-wide bomb guard (Image.MAX_IMAGE_PIXELS) is left as the application set it.
    """
    return np.asarray(
        decode_photo(data, name, max_pixels=max_pixels, max_file_bytes=max_file_bytes).image, dtype=np.uint8
    )


# EXIF orientation -> which stored axis each upright axis runs backwards along ((x, y); "w": the stored width,
# "h": the stored height, None: not reversed), as ImageOps.exif_transpose turns the photo.
_REVERSED = {
    2: ("w", None),
    3: ("w", "h"),
    4: (None, "h"),
    5: (None, None),
    6: ("h", None),
    7: ("h", "w"),
    8: (None, "w"),
}
# EXIF orientation -> ImageOps.exif_transpose's turn, and where an upright point (x, y) lies in the stored
# width x height image (continuous coordinates).
_TURNS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_STORED_POINT = {
    1: lambda x, y, w, h: (x, y),
    2: lambda x, y, w, h: (w - x, y),
    3: lambda x, y, w, h: (w - x, h - y),
    4: lambda x, y, w, h: (x, h - y),
    5: lambda x, y, w, h: (y, x),
    6: lambda x, y, w, h: (y, h - x),
    7: lambda x, y, w, h: (w - y, h - x),
    8: lambda x, y, w, h: (w - y, x),
}


class DecodedPhoto:
    """A photo decoded once for both detection and cropping, at 1/`scale` of its full resolution.

    `image` is the upright RGB photo (a PIL image) at 1/`scale` of each side: 1 (full resolution: not a JPEG, or a
    JPEG no bigger than the detection copy) or 2, 4, 8 (libjpeg's DCT scaling). `width` x `height` is the full
    upright size, the frame of every box, as decode_rgb would return it. `crops` cuts faces with the framing of
    `crop_face` at full resolution, from this copy or, for faces too small in it, from a finer decode of `data`.
    A finer decode stays as stored (`orientation` not yet applied, its own mode): each crop is turned and
    converted alone, so no turned or converted copy of a big photo is ever made.
    """

    def __init__(
        self,
        image: Image.Image,
        scale: int,
        width: int,
        height: int,
        offset: tuple[int, int],
        data: bytes,
        name,
        max_pixels: int,
        max_file_bytes: int,
        orientation: int = 1,
    ):
        self.image, self.scale, self.width, self.height = image, scale, width, height
        self.offset = offset  # (x, y): full-resolution pixels by which the reduced grid starts before the photo
        self.orientation = orientation  # the EXIF orientation still to apply to `image` (1: it is upright RGB)
        self._source = (data, name, max_pixels, max_file_bytes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The full-resolution array shape (height, width, 3), as decode_rgb would return it."""
        return self.height, self.width, 3

    def _to_copy(self, x: float, y: float) -> tuple[float, float]:
        """Full-resolution (x, y) -> the same point in `image`'s pixels."""
        return (x + self.offset[0]) / self.scale, (y + self.offset[1]) / self.scale

    def resized(self, size: tuple[int, int]) -> np.ndarray:
        """The whole photo as an RGB array of `size` (width, height): the detection copy."""
        if self.orientation != 1:
            raise ValueError("resized() needs an upright decode")
        if self.scale == 1 and size == (self.width, self.height):
            return np.asarray(self.image, dtype=np.uint8)
        box = (*self._to_copy(0, 0), *self._to_copy(self.width, self.height))
        return np.asarray(self.image.resize(size, Image.BILINEAR, box=box), dtype=np.uint8)

    def crops(self, boxes: list["Box"], size: int = INPUT_SIZE, min_side: int = MIN_CROP_SIDE) -> np.ndarray:
        """crop_face's framed squares around `boxes` (full-resolution pixels), uint8 [N, size, size, 3].

        A square covering fewer than `min_side` pixels of this copy is cut from the coarsest decode where every
        such square covers at least that many (full resolution at worst), decoded once for all of them.
        """
        out = np.zeros((len(boxes), size, size, 3), np.uint8)
        regions = [crop_box(box, self.height, self.width) for box in boxes]
        finer = [i for i, (_, _, side, _) in enumerate(regions) if self.scale > 1 and side < min_side * self.scale]
        for i, (top, left, side, _) in enumerate(regions):
            if i not in finer:
                out[i] = self._cut(top, left, side, size)
        if finer:
            smallest = min(regions[i][2] for i in finer)
            scale = max([s for s in DRAFT_SCALES if s < self.scale and smallest >= min_side * s] or [1])
            data, name, max_pixels, max_file_bytes = self._source
            closer = decode_photo(
                data, name, scale=scale, max_pixels=max_pixels, max_file_bytes=max_file_bytes, upright=False
            )
            for i in finer:
                top, left, side, _ = regions[i]
                out[i] = closer._cut(top, left, side, size)
        return out

    def _cut(self, top: int, left: int, side: int, size: int) -> np.ndarray:
        x, y = self._to_copy(left, top)
        side = side / self.scale
        if self.orientation == 1 and self.image.mode == "RGB":
            return _cut_square(self.image, y, x, side, size)
        # As stored: the part of the square inside the photo, cut where it lies in the stored image, then
        # converted and turned alone, on a black canvas of the whole square (as _cut_square pads).
        x0, y0, x1, y1 = math.floor(x), math.floor(y), math.ceil(x + side), math.ceil(y + side)
        stored_width, stored_height = self.image.size
        upright_width, upright_height = (
            (stored_height, stored_width) if self.orientation in (5, 6, 7, 8) else self.image.size
        )
        inside = (max(x0, 0), max(y0, 0), min(x1, upright_width), min(y1, upright_height))
        canvas = Image.new("RGB", (x1 - x0, y1 - y0))
        if inside[2] > inside[0] and inside[3] > inside[1]:
            to_stored = _STORED_POINT[self.orientation]
            corners = [
                to_stored(px, py, stored_width, stored_height)
                for px, py in ((inside[0], inside[1]), (inside[2], inside[3]))
            ]
            (sx0, sx1), (sy0, sy1) = sorted(c[0] for c in corners), sorted(c[1] for c in corners)
            patch = _to_rgb_image(self.image.crop((sx0, sy0, sx1, sy1)))
            if self.orientation in _TURNS:
                patch = patch.transpose(_TURNS[self.orientation])
            canvas.paste(patch, (inside[0] - x0, inside[1] - y0))
        box = (x - x0, y - y0, x - x0 + side, y - y0 + side)
        return np.asarray(canvas.resize((size, size), Image.BILINEAR, box=box), dtype=np.uint8)


def decode_photo(
    data: bytes,
    name: str | os.PathLike = "<bytes>",
    max_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    scale: int | None = None,
    upright: bool = True,
) -> DecodedPhoto:
    """Decode encoded image bytes once for detection and cropping, or raise BadImageError naming `name` (decode_rgb's checks).

    A JPEG is decoded at the coarsest DCT scale (1/2, 1/4, 1/8 of each side) whose longer side is still at least
    `max_side` (the detection copy's size), or at exactly 1/`scale` when given; other formats, and `max_side`
    None, at full resolution. EXIF orientation is applied as decode_rgb applies it; with `upright` False the
    image stays as stored, in its own mode (for crops only: DecodedPhoto.crops' finer decode of a JPEG).
    """
    with _opened(data, name, max_pixels, max_file_bytes) as im:
        im.seek(0)
        stored_width, stored_height = im.size
        if scale is None:
            longer = max(im.size)
            scale = max([s for s in DRAFT_SCALES if max_side and longer // s >= max_side and min(im.size) >= s] or [1])
        if scale > 1 and im.format in ("JPEG", "MPO"):  # MPO: a phone's JPEG with more frames (the first is the photo)
            drafted = im.draft(None, (stored_width // scale, stored_height // scale))
            scale = round(stored_width / drafted[1][2]) if drafted else 1
        else:
            scale = 1
        orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
        pad = {"w": scale * im.width - stored_width, "h": scale * im.height - stored_height, None: 0}
        offset = tuple(pad[axis] for axis in _REVERSED.get(orientation, (None, None)))
        width, height = (stored_height, stored_width) if orientation in (5, 6, 7, 8) else (stored_width, stored_height)
        if not upright:
            im.load()
            return DecodedPhoto(
                im,
                scale,
                width,
                height,
                offset,
                data,
                name,
                max_pixels,
                max_file_bytes,
                orientation if orientation in _TURNS else 1,
            )
        ImageOps.exif_transpose(im, in_place=True)
        image = _to_rgb_image(im)
        image.load()
    return DecodedPhoto(image, scale, width, height, offset, data, name, max_pixels, max_file_bytes)


def photo_size(
    data: bytes,
    name: str | os.PathLike = "<bytes>",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> tuple[int, int]:
    """(width, height) of encoded image bytes as `decode_rgb` would return them (EXIF-rotated), from the header only.

    The same checks as decode_rgb's before decoding (size, pixel count, format); no pixel is decoded,
    so a corrupt body is found only by whoever decodes it (the photo model, with server-side detection).
    """
    with _opened(data, name, max_pixels, max_file_bytes) as im:
        width, height = im.size
        orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)  # 90/270-degree EXIF rotations


def _to_rgb_image(im: Image.Image) -> Image.Image:
    """`im` as an 8-bit RGB image (itself when it is one already: a photo is not copied for nothing)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits by the actual range of the format.
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(arr[..., None], 3, axis=-1))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return im if im.mode == "RGB" else im.convert("RGB")


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
    return _cut_square(image, top, left, side, size)


def _cut_square(image: np.ndarray | Image.Image, top: float, left: float, side: float, size: int) -> np.ndarray:
    """The square (top, left, side) of `image` (fractions allowed), parts outside the image black, resized to size x size.

    Whole-pixel squares give exactly the canvas-and-resize of the full-resolution crop; fractional ones (a
    reduced decode) are resampled from exactly that region (Image.resize's `box`).
    """
    y0, x0 = math.floor(top), math.floor(left)
    y1, x1 = math.ceil(top + side), math.ceil(left + side)
    if isinstance(image, Image.Image):
        region = image.crop((x0, y0, x1, y1))  # black outside the image
    else:
        height, width = image.shape[:2]
        canvas = np.zeros((y1 - y0, x1 - x0, 3), dtype=np.uint8)
        src_top, src_left = max(y0, 0), max(x0, 0)
        src_bottom, src_right = min(y1, height), min(x1, width)
        if src_bottom > src_top and src_right > src_left:
            canvas[src_top - y0 : src_bottom - y0, src_left - x0 : src_right - x0] = image[
                src_top:src_bottom, src_left:src_right
            ]
        region = Image.fromarray(canvas)
    box = (left - x0, top - y0, left - x0 + side, top - y0 + side)
    return np.asarray(region.resize((size, size), Image.BILINEAR, box=box), dtype=np.uint8)
