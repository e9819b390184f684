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
