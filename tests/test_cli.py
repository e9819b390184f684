"""The command line: every subcommand and option is described."""

from __future__ import annotations

import click
import pytest

from face2hbe.app.cli import cli, main

SUBCOMMANDS = ["train", "export", "evaluate", "serve", "recommend", "loadtest", "bench"]


def test_top_level_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_option_has_help(name, capsys):
    command = cli.commands[name]
    assert command.help, f"{name} has no description"
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{name} {param.opts} has no help"
    assert main([name, "--help"]) == 0
    assert "Usage" in capsys.readouterr().out


def test_typed_errors_become_one_line_and_exit_1(tmp_path, capsys):
    code = main(["serve", "--repository", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model folder not found" in err[0]


def test_heavy_libraries_not_imported_by_cli():
    import subprocess
    import sys

    code = "import sys, face2hbe.app.cli; bad=[m for m in ('tensorflow','keras','onnxruntime','face_recognition','pytriton') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def _gathers(callback):
    """The innermost function under a command's `gather` decorators, and what each gathers: {name: option names}."""
    gathered = {}
    while hasattr(callback, "__gathered__"):
        name, options = callback.__gathered__
        gathered[name] = options
        callback = callback.__wrapped__
    return callback, gathered


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_each_command_takes_settings_objects_not_one_argument_per_option(name):
    """Options gathered into settings objects (app/options.py: gather) are the command's own, each once, and the
    function takes what is left plus those objects: at most 12 arguments."""
    import inspect

    command = cli.commands[name]
    function, gathered = _gathers(command.callback)
    params = {p.name for p in command.params}
    flat = [option for options in gathered.values() for option in options]
    assert len(flat) == len(set(flat)) and set(flat) <= params, set(flat) - params
    signature = inspect.signature(function).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in signature.values()):  # serve takes its server options as **options
        assert set(signature) - {"ctx"} == (params - set(flat)) | set(gathered)
    assert len(signature) <= 12


def test_no_function_of_the_commands_takes_more_than_12_arguments():
    import ast

    from conftest import ROOT

    for path in sorted((ROOT / "app").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                count = len(node.args.args) + len(node.args.kwonlyargs) + len(node.args.posonlyargs)
                assert count <= 12, f"{path.name}:{node.lineno} {node.name} takes {count} arguments"
