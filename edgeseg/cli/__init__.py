"""``edgeseg`` command line: a thin click layer over the library.

Every command turns a user-facing failure (:class:`edgeseg.errors.EdgesegError`, a click usage
error, an operating-system error such as a full disk, a lack of memory) into one line on stderr
(control characters escaped) and exit code 2; outputs are written to a temporary path and renamed,
so a failed command leaves no output file. SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted`
in the main thread, so the temporary output is removed before the process exits, with one line and
exit code 2 like any other failure.
One module per group of commands registers them on :data:`edgeseg.cli.common.cli`.
"""

from __future__ import annotations

import os
import signal
import sys

import click

from edgeseg import fileio
from edgeseg.bundlecheck import printable
from edgeseg.cli import analyze, bank, bench, build, convert, distill, encoders, segment  # noqa: F401  (commands)
from edgeseg.cli.common import cli
from edgeseg.errors import EdgesegError, MissingExtra, extra_of

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):
    """A stop signal, raised where the program is so that every ``finally`` and atomic write cleans up."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _on_signal(signum: int, frame) -> None:
    for other in SIGNALS:  # the cleanup that follows runs undisturbed
        signal.signal(other, signal.SIG_IGN)
    fileio.request_stop(signal.Signals(signum).name)  # atomic writes refuse to finish even if this is swallowed
    raise Interrupted(signum)


def _install_handlers() -> dict:
    previous = {}
    for signum in SIGNALS:
        try:
            previous[signum] = signal.signal(signum, _on_signal)
        except (ValueError, OSError):  # not the main thread, or a platform without the signal
            continue
    return previous


def _error(message: object) -> None:
    click.echo(f"edgeseg: error: {printable(message, 2000)}", err=True)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the CLI, mapping user errors to one stderr line and exit 2."""
    fileio.clear_stop()
    previous = _install_handlers()
    try:
        cli.main(args=argv, prog_name="edgeseg", standalone_mode=False)
        if fileio.stop_requested():  # stopped, but the exception was swallowed on its way up
            raise fileio.stopped_error(fileio.stop_requested())
    except EdgesegError as exc:
        _error(exc)
        return exc.exit_code
    except click.exceptions.Abort:
        _error("aborted")
        return 2
    except click.ClickException as exc:
        _error(" ".join(exc.format_message().split()) + " (see --help)")
        return 2
    except (KeyboardInterrupt, Interrupted) as exc:
        name = exc.args[0] if isinstance(exc, Interrupted) else "SIGINT"
        _error(f"stopped by {name}; the unfinished output was removed")
        return 2
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        _error("the output pipe was closed")
        return 2
    except MemoryError:
        _error("out of memory (a smaller input, batch or context length may fit)")
        return 2
    except ModuleNotFoundError as exc:  # an optional package that no require_extra() check caught first
        extra = extra_of(exc.name or "")
        if extra is None:
            raise
        error = MissingExtra(_command(argv), extra, [(exc.name or "").split(".")[0]])
        _error(error)
        return error.exit_code
    except OSError as exc:  # the environment failed us: a full disk, a read-only folder, an unreadable file
        where = f"{exc.filename}: " if exc.filename else ""
        _error(f"{where}{exc.strerror or exc}")
        return 2
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def _command(argv: list[str] | None) -> str:
    """``edgeseg NAME`` for the command named on the command line (for messages)."""
    args = sys.argv[1:] if argv is None else argv
    name = next((a for a in args if a in cli.commands), None)
    return f"edgeseg {name}" if name else "this edgeseg command"


__all__ = ["Interrupted", "cli", "main"]
