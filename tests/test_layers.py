"""Layers: which folder may import which, read from every import in the source (function-level ones included,
where cycles hide; relative imports resolved).

    core      src/face2hbe                   -> core
    stages    training                       -> core
              export                         -> core, training (export converts what training built)
              serving                        -> core
              client                         -> core
    top       loadtest (load testing)        -> core, training (CelebA crops), serving (the server it loads)
              loadtest/bench (benchmarks)    -> core, the stages they measure, load testing, other benchmarks
              app (the commands)             -> core, stages, load testing; a benchmark only from `face2hbe bench`
              tools/*.py (scripts)           -> core, stages, load testing, app
              model_repository/*/*/model.py  -> core (Triton's Python backend runs them inside the server)

Nothing imports a benchmark but another benchmark and the `face2hbe bench` command. The units are the package
map's entries in pyproject.toml plus loadtest/bench, tools/ and the models: a mapped folder without a rule fails.
"""

from __future__ import annotations

import ast
import shutil
import tomllib
from pathlib import Path

from conftest import ROOT

CORE = "face2hbe"
TRAINING, EXPORT, SERVING, CLIENT = "face2hbe.training", "face2hbe.export", "face2hbe.serving", "face2hbe.client"
STAGES = {TRAINING, EXPORT, SERVING, CLIENT}
LOADTEST, BENCH, APP = "face2hbe.loadtest", "face2hbe.loadtest.bench", "face2hbe.app"
TOOLS, MODELS = "tools", "model_repository"  # scripts and Triton Python-backend models: outside the package map

MAY_IMPORT = {
    CORE: {CORE},
    TRAINING: {CORE},
    EXPORT: {CORE, TRAINING},
    SERVING: {CORE},
    CLIENT: {CORE},
    LOADTEST: {CORE, TRAINING, SERVING},
    BENCH: {CORE, *STAGES, LOADTEST},
    APP: {CORE, *STAGES, LOADTEST},
    TOOLS: {CORE, *STAGES, LOADTEST, APP},
    MODELS: {CORE},
}
# The one way into a benchmark from outside the benchmarks: the command that runs it.
ENTRY_POINTS = {("face2hbe.app.load_commands", "face2hbe.loadtest.bench.server")}


def package_dirs(root: Path) -> dict[str, Path]:
    config = tomllib.loads((root / "pyproject.toml").read_text())
    return {name: root / folder for name, folder in config["tool"]["setuptools"]["package-dir"].items()}


def modules(root: Path):
    """(module name, file) for every Python file of the distribution, subpackages included."""
    dirs = package_dirs(root)
    for package, folder in dirs.items():
        nested = [d for other, d in dirs.items() if other != package and d.is_relative_to(folder)]
        for path in sorted(folder.rglob("*.py")):
            if any(path.is_relative_to(d) for d in nested):
                continue  # another entry of the map owns it
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def scripts(root: Path):
    """(unit, file) for the Python files outside the package map that import face2hbe: tools and models."""
    for path in sorted((root / "tools").glob("*.py")):
        yield TOOLS, path
    for path in sorted((root / "model_repository").glob("*/*/model.py")):
        yield MODELS, path


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
    """The unit a face2hbe module belongs to: the longest unit name that is it or a package above it."""
    units = [u for u in MAY_IMPORT if u not in (TOOLS, MODELS) and (module == u or module.startswith(u + "."))]
    return max(units, key=len)


def violations(root: Path) -> list[str]:
    found = []
    files = [(unit(name), name, path) for name, path in modules(root)]
    files += [(source, path.stem, path) for source, path in scripts(root)]
    for source, name, path in files:
        for target_module in sorted(imported(name if source not in (TOOLS, MODELS) else "", path)):
            target = unit(target_module)
            if target == source or target in MAY_IMPORT[source]:
                continue
            if any(name == a and target_module.startswith(b) for a, b in ENTRY_POINTS):
                continue
            line = f"{path.relative_to(root)}: {source} imports {target}"
            if line not in found:
                found.append(line)
    return found


def test_every_import_respects_the_layers():
    assert violations(ROOT) == []


def test_every_folder_has_a_rule_and_every_package_ships():
    """A new entry in the package map needs its rule here first; every folder with an __init__.py under a mapped
    one (loadtest/bench, say) is in pyproject.toml's package list, or the wheel would leave it out."""
    assert set(package_dirs(ROOT)) | {BENCH} == set(MAY_IMPORT) - {TOOLS, MODELS}
    assert {unit(name) for name, _ in modules(ROOT)} | {u for u, _ in scripts(ROOT)} == set(MAY_IMPORT)
    shipped = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert {name for name, path in modules(ROOT) if path.name == "__init__.py"} == shipped


# What each unit gets planted: a core module importing a stage, a stage another stage, the top a benchmark ...
PLANT = {
    CORE: SERVING,
    TRAINING: CLIENT,
    EXPORT: SERVING,
    SERVING: CLIENT,
    CLIENT: SERVING,
    LOADTEST: BENCH,
    BENCH: APP,
    APP: BENCH,
    TOOLS: BENCH,
    MODELS: CLIENT,
}


def test_a_planted_violation_fails_the_check_in_every_folder(tmp_path):
    """In a copy of the tree, each unit in turn gets a function-level import of a unit it may not use: the check
    names exactly that file and that import (the commands' entry point into one benchmark covers no other)."""
    assert set(PLANT) == set(MAY_IMPORT) and all(PLANT[u] not in MAY_IMPORT[u] for u in PLANT)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    for folder in {p.relative_to(ROOT).parts[0] for p in package_dirs(ROOT).values()} | {TOOLS, MODELS}:
        shutil.copytree(
            ROOT / folder,
            tmp_path / folder,
            ignore=shutil.ignore_patterns("samples", "__pycache__", "*.onnx", "node_modules", "*.txt", "*.pbtxt"),
        )
    assert violations(tmp_path) == []
    # Each unit's first module.
    files = {unit(name): path for name, path in sorted(modules(tmp_path), reverse=True) if path.stem != "__init__"}
    files.update(dict(scripts(tmp_path)))
    assert set(files) == set(PLANT)
    for source, path in sorted(files.items()):
        module = f"{PLANT[source]}.e2e" if PLANT[source] == BENCH else PLANT[source]
        original = path.read_text()
        path.write_text(original + f"\n\ndef planted():\n    import {module}\n\n    return {module}\n")
        try:
            assert violations(tmp_path) == [f"{path.relative_to(tmp_path)}: {source} imports {PLANT[source]}"]
        finally:
            path.write_text(original)
