"""Small file helpers used across the package: atomic writes, hashing, prompt files.

No torch here: the deployment path uses these.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from edgeseg.bundlecheck import BundleError, printable, read_bounded
from edgeseg.bundlecheck import sha256_file as sha256_file  # re-exported: one implementation
from edgeseg.errors import EdgesegError
from edgeseg.tmpnames import remove_path, tmp_prefix
from edgeseg.tmpnames import remove_stale as remove_stale  # re-exported: atomic_path removes them too

log = logging.getLogger(__name__)


#: errors that only writing causes (a full disk or quota, a file too large, a read-only file system)
WRITE_ONLY_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
#: errors of writing when they name the output (no permission, a pseudo file system, ...)
WRITE_ERRORS = WRITE_ONLY_ERRORS | {errno.EACCES, errno.EPERM, errno.EIO, errno.ENAMETOOLONG, errno.ENOENT,
                                    errno.ENOTDIR, errno.EISDIR, errno.EXDEV, errno.EBUSY}


#: the stop signal a handler has seen in this process (edgeseg.cli records it before raising), so that
#: no output is renamed into place after a stop whose exception a library swallowed on its way up
_STOPS: list[str] = []


def request_stop(name: str) -> None:
    _STOPS.append(name)


def stop_requested() -> str | None:
    """The first stop signal's name since :func:`clear_stop`, or None."""
    return _STOPS[0] if _STOPS else None


def clear_stop() -> None:
    _STOPS.clear()


def stopped_error(name: str) -> EdgesegError:
    return EdgesegError(f"stopped by {name}; the unfinished output was removed")


def _write_error(target: Path, exc: OSError) -> EdgesegError:
    return EdgesegError(f"cannot write {printable(target)}: {exc.strerror or exc}")


def check_output_folder(target: str | os.PathLike) -> Path:
    """Fail early (before any long work) unless files can be created in ``target``'s folder."""
    parent = Path(target).parent if str(Path(target).parent) else Path(".")
    if not parent.is_dir():
        raise EdgesegError(f"output folder {printable(parent)} does not exist")
    probe = parent / f"{tmp_prefix(Path(target))}{os.getpid()}-probe"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise EdgesegError(f"cannot create files in {printable(parent)} ({exc.strerror or exc})") from None
    return parent


def check_output_target(target: str | os.PathLike, directory: bool = False) -> Path:
    """``target`` can become the output: a real name, not a link, of the right kind if it exists.

    An output file may replace a regular file and an output folder an existing folder (the caller
    decides which folders); nothing else (a device, a FIFO, a symbolic link) is ever replaced.
    """
    text = os.fspath(target)
    if text in ("", ".") or Path(text).name in ("", ".", ".."):
        raise EdgesegError(f"output path {printable(repr(text))} is empty or not a name: give the file or folder "
                           "to write")
    target = Path(text)
    if target.is_symlink():
        raise EdgesegError(f"output {printable(target)} is a symbolic link: refusing to replace it (give the real "
                           "path)")
    if target.exists():
        if directory and not target.is_dir():
            raise EdgesegError(f"output {printable(target)} exists and is not a folder: refusing to replace it")
        if not directory and target.is_dir():
            raise EdgesegError(f"output {printable(target)} is an existing folder: give a file name")
        if not directory and not target.is_file():
            raise EdgesegError(f"output {printable(target)} exists and is not a regular file: refusing to replace it")
    check_output_folder(target)
    return target


def _real(path: Path) -> str:
    return os.path.realpath(os.path.abspath(path))


def check_not_an_input(out: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse an output that is one of the inputs (through symlinks and hard links), holds one, or is inside an
    input bundle."""
    out = Path(out)
    real_out = _real(out)
    for item in inputs:
        item = Path(item)
        if not os.path.lexists(item):
            continue
        real_in = _real(item)
        same = real_out == real_in or (out.exists() and os.path.samefile(out, item))
        if same:
            raise EdgesegError(f"--out {printable(out)} is the input {printable(item)}: refusing to overwrite it")
        if real_in.startswith(real_out.rstrip(os.sep) + os.sep):
            raise EdgesegError(f"--out {printable(out)} holds the input {printable(item)}: refusing to replace it")
        if (item / "manifest.json").is_file() and real_out.startswith(real_in.rstrip(os.sep) + os.sep):
            raise EdgesegError(f"--out {printable(out)} is inside the input bundle {printable(item)}: refusing to "
                               "change it")


def _make_tmp(target: Path, directory: bool, tag: str = "") -> Path:
    prefix = f"{tmp_prefix(target)}{os.getpid()}-{tag}"
    try:
        if directory:
            return Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=target.suffix, dir=target.parent)
        os.close(fd)
        return Path(name)
    except OSError as exc:
        raise _write_error(target, exc) from None


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; on success rename it onto ``target``.

    On any exception (a signal too, see ``edgeseg.cli``) the temporary file or directory is removed
    and ``target`` is untouched, so a failed command never leaves a half-written output behind; a
    write error (no space, read-only, no permission) becomes one :class:`EdgesegError` naming
    ``target``. The suffix of ``target`` is kept on the temporary name (numpy appends ``.npz`` to
    names without it). An existing folder ``target`` is moved aside first and removed only once the
    new one is in place.
    """
    target = check_output_target(target, directory)
    remove_stale(target)
    tmp = _make_tmp(target, directory)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, (0o777 if directory else 0o666) & ~umask)  # mkstemp/mkdtemp create private paths
    try:
        yield tmp
        if stop_requested():  # a stop arrived and was swallowed below us: this output is unfinished
            raise stopped_error(stop_requested())
        _replace(tmp, target, directory)
    except BaseException as exc:
        remove_path(tmp)
        if isinstance(exc, OSError) and (exc.errno in WRITE_ONLY_ERRORS or exc.errno in WRITE_ERRORS and (
                exc.filename is None or str(exc.filename).startswith((str(tmp), str(target))))):
            raise _write_error(target, exc) from exc
        raise


def _replace(tmp: Path, target: Path, directory: bool) -> None:
    if not (directory and target.is_dir()):
        os.replace(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f"{tmp_prefix(target)}{os.getpid()}-old-", dir=target.parent))
    os.replace(target, old / "previous")
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old / "previous", target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def work_dir(target: str | os.PathLike) -> Iterator[Path]:
    """A scratch folder beside ``target`` (named as our temporaries are), removed when the block ends."""
    target = Path(target)
    path = _make_tmp(target, directory=True, tag="work-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


#: the largest prompts file read (a 10 MB line still fits), and the most lines in it
MAX_PROMPTS_BYTES = 256 << 20
MAX_PROMPTS = 1_000_000


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts from a UTF-8 text file, one per line; blank lines are skipped.

    A missing, unreadable, non-UTF-8, prompt-less or huge file (over :data:`MAX_PROMPTS_BYTES` or
    :data:`MAX_PROMPTS` lines),
    or anything but a regular file (a FIFO, a device), is a user error (:class:`EdgesegError`).
    """
    path = Path(path)
    shown = printable(path)
    if not path.exists():
        raise EdgesegError(f"prompts file {shown} does not exist")
    try:
        data = read_bounded(path, MAX_PROMPTS_BYTES, f"prompts file {shown}")
    except BundleError as exc:
        raise EdgesegError(str(exc)) from None
    if data.count(b"\n") > MAX_PROMPTS:
        raise EdgesegError(f"prompts file {shown} has more than {MAX_PROMPTS:,} lines; split it")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise EdgesegError(f"prompts file {shown} is not UTF-8 text (bad byte at line {line})") from exc
    text = text.removeprefix("\ufeff")
    # Lines end at "\n" (a trailing "\r" is dropped); Unicode line separators stay inside a prompt.
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise EdgesegError(f"prompts file {shown} holds no prompts (expected one prompt per line)")
    if len(prompts) < len(lines):
        log.info("skipped %d blank line(s) in %s", len(lines) - len(prompts), shown)
    return prompts
