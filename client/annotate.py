"""Annotated copies of the input photos: face boxes, labels with scores, products.

Like the prototype's titled pictures: a title band on top with the image's
recommendation (or why there is none), and per face its box, every served label that
passes (decisions.py) with its score, and the face's recommended products.
Only whole photos are written (as JPEG), never the face crops.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from face2hbe.imaging import load_rgb

from .decisions import NO_ITEMS
from .results import ImageResult

JPEG_QUALITY = 90
LABEL_COLOURS = {"eyewear": (30, 144, 255), "beard": (255, 140, 0), "hat": (50, 205, 50)}
OTHER_COLOUR = (230, 30, 30)  # a face whose first label is an attribute's
NO_ITEM_COLOUR = (200, 200, 200)  # a face showing no item
TITLE_BACKGROUND = (255, 255, 255)
JPEG_SUFFIXES = {".jpg", ".jpeg"}


def annotated_path(out_dir: str | Path, image_path: str | Path, profile: str | None = None) -> Path:
    """Where the annotated copy of `image_path` goes under `out_dir`.

    A photo found in a folder keeps its path below that folder (under the
    folder's name); a photo given alone goes to the top of `out_dir`. Non-JPEG
    names get ".jpg" appended (photo.png -> photo.png.jpg) so photo.png and
    photo.jpg side by side cannot overwrite each other.
    """
    image_path = Path(image_path)
    if profile:
        folder = Path(profile)
        try:  # not resolved: symlinked photos stay under the folder they were found in
            inside = image_path.relative_to(folder)
        except ValueError:
            inside = Path(image_path.name)
        relative = Path(folder.name or folder.resolve().name or "root") / inside
    else:
        relative = Path(image_path.name)
    if relative.suffix.lower() not in JPEG_SUFFIXES:
        relative = relative.with_name(relative.name + ".jpg")
    return Path(out_dir) / relative


def _temporary(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


def remove_stale_temporaries(out_dir: str | Path) -> int:
    """Delete half-written pictures a killed run left in `out_dir` (only names `_temporary` makes)."""
    removed = 0
    for path in Path(out_dir).rglob(".*.jpg.*.tmp"):
        if path.is_file() and path.name.split(".")[-2].isdigit():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable (FreeType) in Pillow >= 10.1
    except TypeError:  # pragma: no cover - older Pillow: fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """`text`, cut with '...' so it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def title_text(result: ImageResult, currency: str = "") -> str:
    if result.error:
        return f"error: {result.error.get('message', result.error.get('kind', ''))}"
    if result.recommendation:
        r = result.recommendation
        return f"{result.top_label}: {r['name']} ({r['price']:.2f} {currency})".replace(" )", ")")
    return result.reason or NO_ITEMS


def face_lines(face) -> list[str]:
    """Every label that passes (with its score) then the face's products; or 'no items' with the best score."""
    scores = face.all_scores
    if face.passing_labels:
        lines = ["  ".join(f"{label} {scores[label]:.2f}" for label in face.passing_labels)]
        lines += [f"> {sku['name']}" for sku in face.skus]
        return lines
    best = max(scores, key=scores.get) if scores else None
    return [f"no items ({best} {scores[best]:.2f})" if best else "no items"]


def face_colour(face) -> tuple[int, int, int]:
    """The colour of the face's first product's label, else of its first passing label; grey when none passes."""
    first = face.skus[0]["label"] if face.skus else (face.passing_labels or [None])[0]
    return NO_ITEM_COLOUR if first is None else LABEL_COLOURS.get(first, OTHER_COLOUR)


def draw_annotations(image: np.ndarray, result: ImageResult, currency: str = "") -> Image.Image:
    """The annotated picture: a title band above the photo, boxes and captions on it."""
    height, width = image.shape[:2]
    font_size = max(10, round(min(width, height) / 28))
    line = max(2, round(min(width, height) / 150))
    pad = max(2, font_size // 4)
    font = _font(font_size)
    band = font_size + 2 * pad
    canvas = Image.new("RGB", (width, height + band), TITLE_BACKGROUND)
    canvas.paste(Image.fromarray(image), (0, band))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad), _fit(draw, title_text(result, currency), font, width - 2 * pad), fill=(0, 0, 0), font=font)
    for face in result.faces:
        top, right, bottom, left = face.box
        colour = face_colour(face)
        draw.rectangle((left, top + band, right, bottom + band), outline=colour, width=line)
        # Caption below the box, or above it when the box reaches the bottom edge.
        texts = [_fit(draw, t, font, max(width - 2 * pad, font_size)) for t in face_lines(face)]
        text_h = len(texts) * (font_size + pad) + pad
        y = (
            bottom + band + line
            if bottom + band + line + text_h <= height + band
            else max(band, top + band - line - text_h)
        )
        text_w = max(draw.textlength(t, font=font) for t in texts) + 2 * pad
        x = min(max(0, left), max(0, width - text_w))
        draw.rectangle((x, y, x + text_w, y + text_h), fill=colour)
        for i, t in enumerate(texts):
            draw.text((x + pad, y + pad + i * (font_size + pad)), t, fill=(0, 0, 0), font=font)
    return canvas


def annotate(
    result: ImageResult,
    out_dir: str | Path,
    profile: str | None = None,
    currency: str = "",
    max_pixels: int | None = None,
    max_file_bytes: int | None = None,
) -> Path | None:
    """Write the annotated copy of `result`'s photo; None when the photo itself cannot be read.

    The photo is re-read (upright, as the client saw it): detection ran in
    other processes and its arrays never come back.
    """
    limits = {k: v for k, v in (("max_pixels", max_pixels), ("max_file_bytes", max_file_bytes)) if v}
    try:
        image = load_rgb(result.path, **limits)
    except Exception:
        return None  # its record already carries the reason
    target = annotated_path(out_dir, result.path, profile)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(target)
    # Written aside then renamed, so a killed run never leaves half a picture.
    draw_annotations(image, result, currency).save(tmp, format="JPEG", quality=JPEG_QUALITY)
    os.replace(tmp, target)
    return target
