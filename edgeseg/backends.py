"""The optional backends a bundle may need, checked before use: one line saying what is missing.

Shared by the build side (:mod:`edgeseg.targets`) and the run side (:mod:`edgeseg.runtime`), which
imports nothing from the build side. The heavy modules are imported only when checked.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

from edgeseg import trtprobe
from edgeseg.errors import EdgesegError, MissingExtra

TENSORRT_MISSING = (
    "TensorRT not found: install TensorRT 10+ with its Python bindings (pip install tensorrt, on Linux or Windows "
    "x86-64 with an NVIDIA driver) or use --target jetson to build on the device"
)
NO_GPU = "no NVIDIA GPU found (TensorRT builds need one): run on a machine with a GPU or use --target jetson to " \
         "build on the device"

import_tensorrt = trtprobe.import_tensorrt  # looked up here at each call, so that a test can replace it


def require_tensorrt(gpu_probe: Callable[[], dict | None] | None = None) -> tuple[Any, dict]:
    """(tensorrt module, GPU facts) or an :class:`EdgesegError` with one line saying what is missing
    (``gpu_probe``: default :func:`edgeseg.trtprobe.gpu_info`)."""
    trt = import_tensorrt()
    if trt is None:
        raise EdgesegError(TENSORRT_MISSING)
    version = getattr(trt, "__version__", "0")
    if trtprobe.tensorrt_version_tuple(version) < trtprobe.MIN_TENSORRT:
        raise EdgesegError(f"TensorRT {version} is too old: strongly typed networks with int64 ids need TensorRT 10+; "
                           "upgrade, or use --target jetson to build on the device")
    gpu = (gpu_probe or trtprobe.gpu_info)()
    if gpu is None:
        raise EdgesegError(NO_GPU)
    return trt, gpu


def require_coremltools(what: str = "--target coreml"):
    """The coremltools module (its import-time warnings and logging silenced), or :class:`MissingExtra`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("coremltools").setLevel(logging.ERROR)
            import coremltools as ct
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "coremltools":
            raise
        raise MissingExtra(what, "coreml", ["coremltools"]) from exc
    return ct
