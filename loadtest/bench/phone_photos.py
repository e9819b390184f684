"""Phone-size photos built from real ones at run time: collages of LFW photos, several faces each.

The users' photos are 12-48 MP phone JPEGs, while LFW's are 250x250. `phone_photos` lays LFW photos
(upscaled, bicubic) out on a 4032x3024 (12 MP, `PHONE`) or 6000x4000 (24 MP, `LARGE`) canvas in one of
three layouts, in turn:

- "grid": 4x3 equal cells (12 faces, each about 0.4 of a cell side);
- "mixed": two big cells (half the short side) beside a grid of cells a quarter of it (14 or 18 faces:
  the small faces are the ones too small in a 1/4-scale decode, so they take the finer second look);
- "single": one photo upscaled to the short side on a grey canvas (one face filling the frame).

Every second photo is a portrait stored the way phone sensors store it: landscape pixels with EXIF
orientation 6 (rotate 90 degrees clockwise to display). A fixed grain (+-12 grey levels) stands in for
sensor noise, so the JPEGs (quality 90, about 0.25 bytes per pixel: 3 MB at 12 MP) are about as heavy to
decode as camera files of that size rather than smooth upscales (0.12-0.15 bytes per pixel).

Nothing is written into the repository: the photos are built in memory; callers keep them there or
write them to a temporary folder (LFW is research data we may not redistribute).
"""

from __future__ import annotations

import csv
import functools
import io
from pathlib import Path

import numpy as np

PHONE = (4032, 3024)  # 12 MP, the common phone camera
LARGE = (6000, 4000)  # 24 MP
SIZES = {"phone": PHONE, "large": LARGE}
LAYOUTS = ("grid", "mixed", "single")
QUALITY = 90
GRAIN = 12  # grey levels of fixed noise added to every pixel (+-)


def lfw_photos(lfw_dir: str | Path, count: int, skip: int = 0) -> list[Path]:
    """`count` LFW photo paths in labels.csv order after the first `skip` (many people, one folder each)."""
    lfw_dir = Path(lfw_dir)
    with (lfw_dir / "labels.csv").open(newline="") as f:
        rows = [row["path"] for row in csv.DictReader(f)]
    return [lfw_dir / path for path in rows[skip : skip + count]]


def photos_needed(layout: str, size: tuple[int, int] = PHONE) -> int:
    """Source photos one collage of `layout` at `size` (landscape) takes."""
    return len(_cells(layout, *size))


def _cells(layout: str, width: int, height: int) -> list[tuple[int, int, int]]:
    """(left, top, side) of each square cell of `layout` on a width x height canvas (a portrait's are a landscape's turned)."""
    short, long_ = min(width, height), max(width, height)
    if layout == "grid":
        side = min(long_ // 4, short // 3)
        cells = [(c * side, r * side, side) for r in range(3) for c in range(4)]
    elif layout == "mixed":
        big, side = short // 2, short // 4
        cells = [(0, 0, big), (0, big, big)] + [
            (big + c * side, r * side, side) for r in range(4) for c in range((long_ - big) // side)
        ]
    elif layout == "single":
        cells = [((long_ - short) // 2, 0, short)]
    else:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    return cells if width >= height else [(y, x, side) for x, y, side in cells]


def collage(sources: list[str | Path], layout: str, size: tuple[int, int] = PHONE, portrait: bool = False):
    """An upright PIL RGB collage of the photos at `sources` (as many as `photos_needed`) in `layout`."""
    from PIL import Image, ImageChops

    width, height = (min(size), max(size)) if portrait else (max(size), min(size))
    canvas = Image.new("RGB", (width, height), (128, 128, 128))
    cells = _cells(layout, width, height)
    if len(sources) < len(cells):
        raise ValueError(f"layout {layout!r} at {width}x{height} needs {len(cells)} photos, got {len(sources)}")
    for (left, top, side), source in zip(cells, sources):
        with Image.open(source) as photo:
            canvas.paste(photo.convert("RGB").resize((side, side), Image.BICUBIC), (left, top))
    return ImageChops.add(canvas, _grain(width, height), 1.0, -GRAIN)  # clipped to 0-255


@functools.lru_cache(maxsize=2)
def _grain(width: int, height: int):
    """A fixed noise image of width x height, 0..2*GRAIN (a 256-pixel tile repeated)."""
    from PIL import Image

    tile = np.random.default_rng(0).integers(0, 2 * GRAIN + 1, (256, 256, 3), dtype=np.uint8)
    return Image.fromarray(
        np.ascontiguousarray(np.tile(tile, (height // 256 + 1, width // 256 + 1, 1))[:height, :width])
    )


def encode(image, portrait: bool) -> bytes:
    """JPEG bytes of an upright image; a portrait is stored rotated with EXIF orientation 6, as phones store it."""
    from PIL import Image

    buffer = io.BytesIO()
    if portrait:
        stored = image.transpose(Image.Transpose.ROTATE_90)  # orientation 6 turns it back clockwise
        exif = Image.Exif()
        exif[0x0112] = 6
        stored.save(buffer, "JPEG", quality=QUALITY, exif=exif.tobytes())
    else:
        image.save(buffer, "JPEG", quality=QUALITY)
    return buffer.getvalue()


def phone_photos(lfw_dir: str | Path, count: int, size: tuple[int, int] = PHONE):
    """Yield (name, JPEG bytes) for `count` collages of distinct LFW photos at `size`, layouts and orientations in turn."""
    needed = [photos_needed(layout, size) for layout in LAYOUTS]
    sources = iter(lfw_photos(lfw_dir, sum(needed[i % len(LAYOUTS)] for i in range(count))))
    for i in range(count):
        layout, portrait = LAYOUTS[i % len(LAYOUTS)], i % 2 == 1
        picked = [next(sources) for _ in range(needed[i % len(LAYOUTS)])]
        name = f"{i:05d}_{layout}_{'portrait' if portrait else 'landscape'}_{size[0]}x{size[1]}.jpg"
        yield name, encode(collage(picked, layout, size, portrait), portrait)


def write_phone_photos(target: str | Path, lfw_dir: str | Path, count: int, size: tuple[int, int] = PHONE) -> Path:
    """`target` (a temporary folder) filled with `count` phone-size collages; returns it."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for name, data in phone_photos(lfw_dir, count, size):
        (target / name).write_bytes(data)
    return target


def main(argv=None) -> int:
    """Write collages to a folder (benchmarks build them in a child process, so the client's memory is measured clean)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m face2hbe.loadtest.bench.phone_photos", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "target", type=Path, help="Folder to write the JPEGs into (a temporary one: never the repository)."
    )
    parser.add_argument("--lfw", type=Path, required=True, help="LFW folder (with labels.csv).")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--size", choices=sorted(SIZES), default="phone", help="phone: 4032x3024, large: 6000x4000.")
    args = parser.parse_args(argv)
    write_phone_photos(args.target, args.lfw, args.count, SIZES[args.size])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
