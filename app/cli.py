"""The `face2hbe` command line: the group, its commands (model_commands, eval_commands, run_commands,
load_commands) and the console entry point. Heavy libraries load inside each command."""

from __future__ import annotations

import logging
import sys

import click

from face2hbe.errors import Face2hbeError

from .eval_commands import evaluate, promote, review, slices, thresholds
from .load_commands import bench, loadtest
from .model_commands import export, train
from .run_commands import batch, recommend, serve


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(package_name="face2hbe")
def cli(verbose: bool) -> None:
    """face2hbe: find faces in photos, tell eyewear / beard / hat, recommend products.

    One VGG16 with three sigmoids, exported to ONNX and served by Triton.
    """
    _setup_logging(verbose)


for command in (train, export, slices, thresholds, promote, review, evaluate, serve, recommend, batch, loadtest, bench):
    cli.add_command(command)


def main(argv=None) -> int:
    """Console entry point: typed errors become one line on stderr and exit code 1 (2 for a taken port)."""
    try:
        cli.main(args=argv, prog_name="face2hbe", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except Face2hbeError as exc:
        click.echo(f"error: {exc}", err=True)
        return getattr(exc, "exit_code", 1)  # 2: a server's port is taken (net.PortInUseError)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
