"""Every module imports: each face2hbe.* module of the distribution, each tools/*.py script, each model.py.

Importing a module runs its top-level imports only; a `from face2hbe.x import name` inside a function
(where the heavy or optional imports live) breaks only when that function runs. So each file's
face2hbe imports are also resolved wherever they sit (functions included): the module must exist
and define the name. Third-party imports inside functions are left alone (optional extras, GPUs).

Everything runs in a fresh interpreter: importing locust's users patches the process (gevent).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import ROOT
from test_layers import modules

CHECK = textwrap.dedent(
    """
    import ast, importlib, importlib.util, json, sys, traceback

    def face2hbe_imports(path, package):
        found = []
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                if base == "face2hbe" or base.startswith("face2hbe."):
                    found += [(node.lineno, base, alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                found += [(node.lineno, a.name, None) for a in node.names if a.name.startswith("face2hbe")]
        return found

    failures = []
    # Triton's own module for Python-backend models (model.py files), from the tritonserver in nvidia-pytriton's wheel:
    # the stub puts this folder on the model's path.
    spec = importlib.util.find_spec("pytriton")
    if spec is not None:
        sys.path.append(str(__import__("pathlib").Path(spec.origin).parent / "tritonserver" / "backends" / "python"))
    for name, path, package in json.loads(sys.argv[1]):
        try:
            if name.startswith("face2hbe"):
                importlib.import_module(name)
            else:  # a tools/ script, imported as a module (its main guard keeps it from running)
                spec = importlib.util.spec_from_file_location(name, path)
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
        except BaseException as exc:
            failures.append(f"{path}: import failed: {traceback.format_exception_only(exc)[-1].strip()}")
            continue
        for line, module, attr in face2hbe_imports(path, package):
            try:
                target = importlib.import_module(module)
            except BaseException as exc:
                failures.append(f"{path}:{line}: {module}: {traceback.format_exception_only(exc)[-1].strip()}")
                continue
            if attr is not None and not hasattr(target, attr):
                try:  # a submodule named in `from package import submodule`
                    importlib.import_module(f"{module}.{attr}")
                except ModuleNotFoundError:
                    failures.append(f"{path}:{line}: {module} has no {attr!r}")
    print(json.dumps(failures))
    """
)

LOCUST_USERS = "face2hbe.loadtest.locustfile"  # importing locust patches the process: it runs alone


def every_module(root: Path) -> list[tuple[str, str, str]]:
    """(name, file, package its relative imports start from): the distribution's modules, tools/*.py and the
    repository's Python-backend model.py files."""
    found = [
        (name, str(path), name if path.stem == "__init__" else name.rsplit(".", 1)[0]) for name, path in modules(root)
    ]
    found += [(f"tools_{p.stem}", str(p), "") for p in sorted((root / "tools").glob("*.py"))]
    found += [(f"model_{p.parts[-3]}", str(p), "") for p in sorted((root / "model_repository").glob("*/*/model.py"))]
    return found


def import_failures(items) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", CHECK, json.dumps(items)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_module_and_tool_imports():
    items = every_module(ROOT)
    assert len(items) > 60 and any(name == LOCUST_USERS for name, _, _ in items)
    failures = import_failures([i for i in items if i[0] != LOCUST_USERS])
    failures += import_failures([i for i in items if i[0] == LOCUST_USERS])
    assert failures == [], "\n".join(failures)


def test_a_broken_import_inside_a_function_is_caught(tmp_path):
    """The check sees what a plain import would not: a moved name imported inside a function of a tools/ script."""
    tool = tmp_path / "broken_tool.py"
    tool.write_text("def main():\n    from face2hbe.paths import no_such_name\n    return no_such_name\n")
    assert import_failures([("tools_broken_tool", str(tool), "")]) == [
        f"{tool}:2: face2hbe.paths has no 'no_such_name'"
    ]
