"""Paths as written into results, reports and docs: relative, never this machine's absolute layout."""
from __future__ import annotations

import os
from pathlib import Path


def portable(path: str | os.PathLike) -> str:
    """`path` relative to the current directory (e.g. ../shared/data/celeba), so written JSON names no machine path."""
    return os.path.relpath(Path(path).absolute())


def portable_spec(spec: str) -> str:
    """A KIND:PATH data spec with its path made portable (celeba:/abs/celeba -> celeba:../shared/data/celeba)."""
    kind, sep, path = spec.partition(":")
    return f"{kind}{sep}{portable(path)}" if sep and path else spec
