"""Run bundles: ``edgeseg.runtime.load(DIR).encode(["a dog"])``.

The backend is chosen from the bundle's manifest. Runners follow polygraphy's shape: construct
(cheap), ``activate()`` (load the model), ``encode``/``infer``, ``deactivate()``; or use them as
context managers. Nothing here imports torch: on a device every megabyte counts.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgeseg.bank import bundle_bank
from edgeseg.bundle import verify_bundle
from edgeseg.errors import EdgesegError
from edgeseg.runtime.base import Runner

BACKENDS = {
    "onnxruntime": "edgeseg.runtime.onnxruntime:OnnxRuntimeRunner",
    "tensorrt": "edgeseg.runtime.tensorrt:TensorRTRunner",
    "coreml": "edgeseg.runtime.coreml:CoreMLRunner",
    "bank": "edgeseg.runtime.bank:BankRunner",  # a bank-only bundle (edgeseg bank build --bank-only)
}


def runner_class(backend: str) -> type[Runner]:
    import importlib

    if backend not in BACKENDS:
        raise EdgesegError(f"this edgeseg cannot run '{backend}' bundles (known backends: {', '.join(BACKENDS)})")
    module, _, name = BACKENDS[backend].partition(":")
    return getattr(importlib.import_module(module), name)


def load(bundle: str | os.PathLike, threads: int | None = None, activate: bool = True,
         bank: str | os.PathLike | None = None) -> Runner:
    """Verify a bundle's files against its manifest and return an (activated) runner for it.

    ``bank``: a prompt-bank file (``edgeseg bank build``) to answer known prompts from; it must
    have been built from this bundle. Without it, the bank the bundle ships (if any) is used.
    """
    bundle = Path(bundle)
    manifest = verify_bundle(bundle)
    runner = runner_class(manifest["backend"])(bundle, manifest, threads=threads,
                                               bank=bundle_bank(bundle, manifest, bank))
    if activate:
        runner.activate()
    return runner


__all__ = ["BACKENDS", "Runner", "load", "runner_class"]
