"""Layers: the core under the stages, no stage importing another (export -> training excepted), the CLI on top.

Every import is read from the source (function-level ones included, where cycles hide),
and the package map comes from pyproject.toml's package-dir, so a new folder is checked too.
"""

from __future__ import annotations

import ast
import shutil
import tomllib
from pathlib import Path

from conftest import ROOT

CORE = {
    "face2hbe.contract",
    "face2hbe.errors",
    "face2hbe.imaging",
    "face2hbe.detection",
    "face2hbe.photo",
    "face2hbe.graphs",
    "face2hbe.repository",
    "face2hbe.net",
    "face2hbe.paths",
    "face2hbe.metrics",
}
STAGES = {"face2hbe.training", "face2hbe.export", "face2hbe.client", "face2hbe.serving"}
ALLOWED_STAGE_IMPORTS = {("face2hbe.export", "face2hbe.training")}  # export converts what training built
TOP = {
    "face2hbe.app.cli",
    "face2hbe.app.demo",
    "face2hbe.app.evaluate",
    "face2hbe.app.thresholds",
    "face2hbe.app.slices",
    "face2hbe.app.review",
    "face2hbe.loadtest",
    "face2hbe",
}


def package_dirs(root: Path) -> dict[str, Path]:
    config = tomllib.loads((root / "pyproject.toml").read_text())
    return {name: root / folder for name, folder in config["tool"]["setuptools"]["package-dir"].items()}


def modules(root: Path):
    """(module name, file) for every Python file of the distribution."""
    for package, folder in package_dirs(root).items():
        for path in sorted(folder.glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            yield name, path


def imported(name: str, path: Path) -> set[str]:
    """Every face2hbe module `path` imports, at any depth of the file, relative imports resolved."""
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    # Call-site strings such as "face2hbe.serving.embedded" in a subprocess command are not imports.
    return {m for m in found if m == "face2hbe" or m.startswith("face2hbe.")}


def unit(module: str) -> str:
    """The layer unit a module belongs to: a core module, a stage package, or a top-level one."""
    for group in (CORE, STAGES, TOP - {"face2hbe"}):
        for u in group:
            if module == u or module.startswith(u + "."):
                return u
    return "face2hbe"


def violations(root: Path) -> list[str]:
    found = []
    for name, path in modules(root):
        source = unit(name)
        for target_module in sorted(imported(name, path)):
            target = unit(target_module)
            if target == source or target == "face2hbe" and target_module == "face2hbe":
                continue
            if source in CORE:
                ok = target in CORE
            elif source in STAGES:
                ok = target in CORE or (source, target) in ALLOWED_STAGE_IMPORTS
            else:
                ok = True
            line = f"{path.relative_to(root)}: {source} imports {target}"
            if not ok and line not in found:
                found.append(line)
    return found


def test_every_import_respects_the_layers():
    assert violations(ROOT) == []


def test_a_planted_stage_to_stage_import_fails_the_check(tmp_path):
    """training/ importing the client (even inside a function) is caught, naming the file and the import."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    for folder in {p.relative_to(ROOT).parts[0] for p in package_dirs(ROOT).values()}:
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("samples", "__pycache__"))
    data = tmp_path / "training" / "data.py"
    data.write_text(
        data.read_text() + "\n\ndef planted():\n    from face2hbe.client import Recommender\n    return Recommender\n"
    )
    assert violations(tmp_path) == ["training/data.py: face2hbe.training imports face2hbe.client"]


def test_the_core_imports_no_stage(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    for folder in {p.relative_to(ROOT).parts[0] for p in package_dirs(ROOT).values()}:
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("samples", "__pycache__"))
    imaging = tmp_path / "src" / "face2hbe" / "imaging.py"
    imaging.write_text(imaging.read_text() + "\n\nfrom .serving import embedded  # noqa\n")
    assert violations(tmp_path) == ["src/face2hbe/imaging.py: face2hbe.imaging imports face2hbe.serving"]
