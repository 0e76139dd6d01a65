"""Small file helpers used across the package: atomic writes, hashing, prompt files.

No torch here: the deployment path uses these.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgeseg.errors import EdgesegError

log = logging.getLogger(__name__)


def check_output_folder(target: str | os.PathLike) -> Path:
    """Fail early (before any long work) when ``target``'s folder does not exist."""
    parent = Path(target).parent if str(Path(target).parent) else Path(".")
    if not parent.is_dir():
        raise EdgesegError(f"output folder {parent} does not exist")
    return parent


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; on success rename it onto ``target``.

    On any exception the temporary file or directory is removed and ``target`` is untouched, so a
    failed command never leaves a half-written output behind. The suffix of ``target`` is kept on
    the temporary name (numpy appends ``.npz`` to names without it).
    """
    target = Path(target)
    parent = check_output_folder(target)
    prefix = f".{target.name}.tmp-"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=target.suffix, dir=parent)
        os.close(fd)
        tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, (0o777 if directory else 0o666) & ~umask)  # mkstemp/mkdtemp create private paths
    try:
        yield tmp
        if directory and target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts from a UTF-8 text file, one per line; blank lines are skipped.

    A missing, unreadable, non-UTF-8 or prompt-less file is a user error (:class:`EdgesegError`).
    """
    path = Path(path)
    if not path.exists():
        raise EdgesegError(f"prompts file {path} does not exist")
    if not path.is_file():
        raise EdgesegError(f"prompts file {path} is not a regular file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EdgesegError(f"cannot read prompts file {path}: {exc.strerror}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise EdgesegError(f"prompts file {path} is not UTF-8 text (bad byte at line {line})") from exc
    text = text.removeprefix("\ufeff")
    # Lines end at "\n" (a trailing "\r" is dropped); Unicode line separators stay inside a prompt.
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise EdgesegError(f"prompts file {path} holds no prompts (expected one prompt per line)")
    if len(prompts) < len(lines):
        log.info("skipped %d blank line(s) in %s", len(lines) - len(prompts), path)
    return prompts
