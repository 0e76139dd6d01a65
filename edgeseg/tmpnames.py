"""Temporary siblings named after the process writing them, and the removal of those a killed process
left behind (standard library only).

A temporary of ``NAME`` is ``.NAME.tmp-PID-...`` in the same folder: the writer renames it onto ``NAME``
when it is complete, and removes it on failure; a process killed outright (SIGKILL, power loss) cannot,
so the next writer of ``NAME`` removes the temporaries whose process no longer exists. edgeseg's writers
(:mod:`edgeseg.fileio`) and the on-device Jetson script (beside which this file is copied) name theirs
this way, so either cleans up after the other.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

#: marks a temporary sibling: ``.{name}.tmp-{pid}-{anything}``
TMP_TAG = ".tmp-"


def tmp_prefix(target: Path) -> str:
    """``.NAME.tmp-`` (the name cut to 80 characters, so that the temporary's name stays short enough)."""
    return f".{target.name[:80]}{TMP_TAG}"


def running(pid: int) -> bool:
    """Whether process ``pid`` exists (one that is not ours to signal counts as running)."""
    if os.name == "nt":  # os.kill would end the process there: never take another writer's files
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_path(path: Path) -> None:
    """Remove a file or a folder tree; nothing if it is gone already."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_stale(target: str | os.PathLike) -> int:
    """Remove the temporaries of ``target`` whose process is gone; returns how many."""
    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    pattern = re.compile(re.escape(tmp_prefix(target)) + r"(\d+)-")
    removed = 0
    with contextlib.suppress(OSError):
        for entry in parent.glob(glob.escape(tmp_prefix(target)) + "*"):
            found = pattern.match(entry.name)
            if found and int(found.group(1)) != os.getpid() and not running(int(found.group(1))):
                log.info("removing %s, left by an interrupted run", entry)
                remove_path(entry)
                removed += 1
    return removed
