"""What a batch job reads: folders, image files, text lists of paths and Parquet/CSV manifests with a `path`
column (and optionally `profile`), on local disks or any filesystem pyarrow understands (a URI)."""

from __future__ import annotations

from pathlib import Path

from face2hbe.errors import BadImageError, InputError
from face2hbe.imaging import read_image_file

from ..recommend import find_inputs
from .store import is_uri

MANIFEST_SUFFIXES = {".parquet", ".csv"}
LIST_SUFFIXES = {".txt", ".lst"}


def read_path_list(path: str) -> list[tuple[str, str | None]]:
    """(path, None) for every non-blank, non-# line of a text file of paths."""
    try:
        text = _read_any(path).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the list of paths ({exc})") from None
    return [(line.strip(), None) for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def split_inputs(paths) -> tuple[list[tuple[str, str | None]], list[str]]:
    """(image, profile) items from folders, image files and text lists, and the manifests (Parquet/CSV) apart."""
    items, manifests = [], []
    for raw in paths:
        text = str(raw)
        suffix = Path(text.split("?", 1)[0]).suffix.lower()
        if suffix in MANIFEST_SUFFIXES:
            manifests.append(text)
        elif suffix in LIST_SUFFIXES:
            items.extend(read_path_list(text))
        elif is_uri(text):
            items.append((text, None))  # one file on a remote filesystem (folders there: use a manifest)
        else:
            items.extend((str(p), profile) for p, profile in find_inputs([raw]))
    return items, manifests


def _read_any(path: str) -> bytes:
    if is_uri(path):
        import pyarrow.fs

        fs, inner = pyarrow.fs.FileSystem.from_uri(path)
        with fs.open_input_stream(inner) as f:
            return f.read()
    return Path(path).read_bytes()


def read_image_bytes(path: str, max_file_bytes: int) -> bytes:
    """An image file's bytes from a local path or a pyarrow filesystem URI; BadImageError / OSError otherwise."""
    if is_uri(path):
        import pyarrow.fs

        fs, inner = pyarrow.fs.FileSystem.from_uri(path)
        info = fs.get_file_info(inner)
        if info.type == pyarrow.fs.FileType.NotFound:
            raise BadImageError(path, "cannot read file (No such file or directory)")
        if info.type != pyarrow.fs.FileType.File:
            raise BadImageError(path, "not a regular file")
        if info.size is not None and info.size > max_file_bytes:
            raise BadImageError(path, f"file is {info.size} bytes, above the {max_file_bytes}-byte limit")
        with fs.open_input_stream(inner) as f:
            return f.read()
    return read_image_file(path, max_file_bytes)  # recommend's own reader: non-blocking, a regular file or an error


def source_datasets(paths) -> list:
    """Ray datasets of (path, profile) rows: one for the folders, files and lists, one per manifest."""
    import ray

    items, manifests = split_inputs(paths)
    datasets = []
    if items:
        datasets.append(ray.data.from_items([{"path": p, "profile": prof or ""} for p, prof in items]))
    for manifest in manifests:
        ds = ray.data.read_csv(manifest) if manifest.lower().endswith(".csv") else ray.data.read_parquet(manifest)
        try:
            names = ds.schema().names
        except Exception as exc:
            raise InputError(f"{manifest}: cannot read the manifest ({' '.join(str(exc).split())[:300]})") from None
        if "path" not in names:
            raise InputError(f"{manifest}: the manifest has no 'path' column (columns: {', '.join(names)})")
        datasets.append(ds.select_columns(["path", "profile"] if "profile" in names else ["path"]))
    if not datasets:
        raise InputError("no inputs: give folders, image files, a .txt list of paths or a Parquet/CSV manifest")
    return datasets
