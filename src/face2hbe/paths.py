"""Paths as written into results, reports and docs: never this machine's absolute layout."""

from __future__ import annotations

import os
from pathlib import Path

# Where training-data crops (never users' photos) and bench models are cached by default.
CACHE_DIR = Path.home() / ".cache" / "face2hbe"
# The labelled data sets' default place, relative to the repository root (../shared/data/README.md).
DATA_DIR = Path("../shared/data")
# The labelled sets a command reads when given no --data (KIND:PATH, as `face2hbe train --data` takes them).
DEFAULT_DATA = (f"celeba:{DATA_DIR / 'celeba'}", f"lfw:{DATA_DIR / 'lfw'}")


def portable(path: str | os.PathLike) -> str:
    """A path for files other machines read (training.json, metrics.json, bench.json): never an absolute one.

    Relative paths stay as given; absolute ones become relative to the working directory
    (the repository root when run from there, e.g. ../shared/data/celeba), or `~/...` under
    the home folder.
    """
    path = Path(path)
    if not path.is_absolute():
        return str(path)
    path, cwd, home = (Path(os.path.abspath(p)) for p in (path, os.getcwd(), Path.home()))
    if path.is_relative_to(cwd) or not path.is_relative_to(home):
        return os.path.relpath(path, cwd)
    return str(Path("~") / path.relative_to(home))


def write_marked_section(markdown_file: str | os.PathLike, start: str, end: str, command: str, body: str) -> None:
    """Put "Measured by `command`:" and `body` between the `start` and `end` markers of a Markdown file.

    The section between the markers is replaced; without them, it is appended (with its markers).
    """
    markdown_file = Path(markdown_file)
    block = f"{start}\nMeasured by `{command}`:\n\n{body}\n{end}"
    text = markdown_file.read_text() if markdown_file.is_file() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    markdown_file.write_text(text)


def portable_spec(spec: str) -> str:
    """A KIND:PATH data spec with its path made portable (celeba:/x/repo/../shared/data/celeba -> celeba:../shared/data/celeba)."""
    kind, sep, path = spec.partition(":")
    return f"{kind}{sep}{portable(path)}" if sep and path else spec
