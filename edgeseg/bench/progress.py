"""Progress for long benchmark steps, and the evenly spaced prompt selection every step uses."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any


class LineProgress:
    """Progress for logs (stderr not a terminal): one line per step, at most every ``every_s`` seconds."""

    def __init__(self, total: int, desc: str, every_s: float = 30.0):
        self.total, self.desc, self.every_s = total, desc, every_s
        self.done, self.postfix = 0, ""
        self.started = self.last = time.perf_counter()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            sys.stderr.write(f"edgeseg: {self.desc}: {self.done}/{self.total} after {now - self.started:.0f} s"
                             + (f" ({self.postfix})" if self.postfix else "") + "\n")
            sys.stderr.flush()


def bar(total: int, desc: str, unit: str = "it") -> Any:
    """A tqdm bar on a terminal; plain progress lines when stderr goes to a log."""
    if not sys.stderr.isatty():
        return LineProgress(total, desc)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False)


def spaced(prompts: Sequence[str], count: int) -> list[str]:
    """``count`` evenly spaced prompts, offset by half a step (so not quantize's gate prompts)."""
    step = max(1, len(prompts) // max(1, count))
    return list(prompts[step // 2::step][:count])
