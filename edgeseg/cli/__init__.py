"""``edgeseg`` command line: a thin click layer over the library.

Every command turns a user-facing failure (:class:`edgeseg.errors.EdgesegError`, or a click usage
error) into one line on stderr and exit code 2; outputs are written to a temporary path and
renamed, so a failed command leaves no output file. One module per group of commands registers
them on :data:`edgeseg.cli.common.cli`.
"""

from __future__ import annotations

import sys

import click

from edgeseg.cli import analyze, bank, bench, build, convert, distill, encoders, segment  # noqa: F401  (commands)
from edgeseg.cli.common import cli
from edgeseg.errors import EdgesegError, MissingExtra, extra_of


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the CLI, mapping user errors to one stderr line and exit 2."""
    try:
        cli.main(args=argv, prog_name="edgeseg", standalone_mode=False)
    except EdgesegError as exc:
        click.echo(f"edgeseg: error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("edgeseg: aborted", err=True)
        return 130
    except click.ClickException as exc:
        message = " ".join(exc.format_message().split())
        click.echo(f"edgeseg: error: {message} (see --help)", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("edgeseg: interrupted", err=True)
        return 130
    except ModuleNotFoundError as exc:  # an optional package that no require_extra() check caught first
        extra = extra_of(exc.name or "")
        if extra is None:
            raise
        error = MissingExtra(_command(argv), extra, [(exc.name or "").split(".")[0]])
        click.echo(f"edgeseg: error: {error}", err=True)
        return error.exit_code
    return 0


def _command(argv: list[str] | None) -> str:
    """``edgeseg NAME`` for the command named on the command line (for messages)."""
    args = sys.argv[1:] if argv is None else argv
    name = next((a for a in args if a in cli.commands), None)
    return f"edgeseg {name}" if name else "this edgeseg command"



__all__ = ["cli", "main"]
