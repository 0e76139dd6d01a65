"""The one exception type for user-facing failures, and the check for optional extras.

Raised where a problem with the user's input is understood (a missing prompts file, a checkpoint
that belongs to another model, ...). The CLI turns it into a single line on stderr and exit code 2.
Any other exception is a bug and may show a traceback.

``pip install edgeseg`` installs what running a bundle needs; the build toolchain and the optional
backends are extras (``setup.py``). :func:`require_extra` is the one place that turns a missing
extra into a :class:`MissingExtra` error naming the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from types import ModuleType

#: extra -> the top-level modules it provides (setup.py's extras_require, by import name)
EXTRAS: dict[str, tuple[str, ...]] = {
    "build": ("torch", "onnx", "polygraphy", "safetensors", "onnxconverter_common", "psutil"),
    "sam3": ("sam3", "torchvision", "psutil", "skimage", "imageio", "av"),
    "coreml": ("coremltools",),
    "tensorrt": ("tensorrt",),
    "transformers": ("transformers",),
    "plots": ("matplotlib",),
}


class EdgesegError(Exception):
    """A failure caused by the user's input or environment, with a message meant for them."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class MissingExtra(EdgesegError):
    """An optional dependency is not installed: the message names the extra that installs it."""

    def __init__(self, what: str, extra: str, missing: list[str]):
        self.extra, self.missing = extra, missing
        super().__init__(f"{what} needs the {extra} extra: pip install 'edgeseg[{extra}]' "
                         f"({', '.join(missing)} not installed)")


def missing_modules(*modules: str) -> list[str]:
    """The top-level modules of ``modules`` that cannot be imported here (looked up, not imported)."""
    return [m for m in modules if importlib.util.find_spec(m.split(".")[0]) is None]


def require_extra(what: str, extra: str, *modules: str) -> None:
    """Raise :class:`MissingExtra` if a module of ``extra`` (default: all of them) is not installed.

    ``what`` names the thing that needs it (``"edgeseg export"``, ``"--target coreml"``); the
    check only looks the modules up, so it costs nothing when they are there.
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}")
    missing = missing_modules(*(modules or EXTRAS[extra]))
    if missing:
        raise MissingExtra(what, extra, missing)


def optional_module(module: str, what: str) -> ModuleType | None:
    """Import an optional module, or log that ``what`` is skipped and which extra brings it (None)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != module.split(".")[0]:
            raise  # the module is there but one of its own imports is broken: a real error
        extra = extra_of(module)
        hint = f"pip install 'edgeseg[{extra}]'" if extra else f"pip install {module}"
        logging.getLogger("edgeseg").warning("%s skipped: %s is not installed (%s)", what, module, hint)
        return None


def extra_of(module: str) -> str | None:
    """The extra that installs the top-level module ``module`` (None: a base requirement or unknown)."""
    top = module.split(".")[0]
    return next((extra for extra, names in EXTRAS.items() if top in names), None)
