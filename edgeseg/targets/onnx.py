"""ONNX target: the export / quantize (/ FP16) bundle as it is, for ONNX Runtime, with session options.

The model is the stage's ONNX unchanged. The manifest gains an ``onnxruntime`` section with the
session options edgeseg's runner uses (and that other runtimes, e.g. the C++ one, should use), the
ONNX Runtime version it was checked with, a self-check of the reference prompts against the FP32
outputs, and the latency measured on the build host (batch 1 and the largest batch).
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.bundle import (
    bundle_writer,
    copy_files,
    finalize,
    inherited,
    load_reference,
    tool_versions,
    verify_bundle,
)
from edgeseg.errors import EdgesegError
from edgeseg.outputs import token_fidelity
from edgeseg.runtime.onnxruntime import PROVIDERS, SESSION_OPTIONS, session_options

log = logging.getLogger(__name__)

# The session options the runner uses (recorded in the manifest, which the runner then honours).


def _latency_ms(session, ids: np.ndarray, repeats: int = 20) -> float:
    session.run(["memory", "mask"], {"input_ids": ids})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(["memory", "mask"], {"input_ids": ids})
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def onnx_bundle(
    stage: str | os.PathLike,
    out: str | os.PathLike,
    max_batch: int,
    extra: dict[str, Any] | None = None,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Copy an ONNX stage bundle to ``out`` as an ``onnx`` target bundle; (manifest, summary rows)."""
    import onnxruntime as ort

    say = progress or (lambda message: log.info("%s", message))
    stage = Path(stage)
    manifest = verify_bundle(stage)
    if manifest["backend"] != "onnxruntime":
        raise EdgesegError(f"{stage} is a {manifest['backend']} bundle, not an ONNX one")
    with bundle_writer(out) as tmp:
        copy_files(tmp, stage, manifest)
        say("self-check with ONNX Runtime (the recorded session options) and latency on this host")
        session = ort.InferenceSession(str(tmp / manifest["model"]), session_options(None, threads),
                                       providers=PROVIDERS)
        reference = load_reference(tmp, manifest)
        memories, masks = [], []
        ids = reference["input_ids"]
        for start in range(0, len(ids), max_batch):
            memory, mask = session.run(["memory", "mask"], {"input_ids": ids[start:start + max_batch]})
            memories.append(memory)
            masks.append(mask)
        memory, mask = np.concatenate(memories), np.concatenate(masks)
        check = token_fidelity(memory, reference["memory"], reference["mask"])
        check["mask_equal"] = bool(np.array_equal(mask, reference["mask"]))
        if not check["mask_equal"]:
            raise EdgesegError("ONNX Runtime changed the padding mask on the reference prompts")
        latency = {f"batch_{b}": _latency_ms(session, np.concatenate([ids] * (-(-b // len(ids))))[:b])
                   for b in sorted({1, max_batch})}
        new = inherited(manifest)
        new.update({
            "target": "onnx",
            "backend": "onnxruntime",
            "onnxruntime": {
                "version": ort.__version__, "providers": PROVIDERS, "session_options": SESSION_OPTIONS,
                "max_batch": max_batch, "self_check": {**check, "vs": "reference.npz (FP32)"},
                "latency_ms": latency, "latency_host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                                                        "threads": threads or "all"},
            },
            **(extra or {}),
            "tools": tool_versions("onnx", "onnxruntime", "numpy"),
        })
        result = finalize(tmp, new)
    rows = [
        ("target", f"{manifest['model']} for ONNX Runtime {ort.__version__} (CPU; session options in the manifest)"),
        ("check", f"vs FP32 reference ({check['prompts']} prompts): mean cos {check['mean_cosine']:.5f}, worst "
                  f"{check['worst_cosine']:.5f}; latency here " + ", ".join(
                      f"{k.replace('_', ' ')} {v:.1f} ms" for k, v in latency.items())),
    ]
    return result, rows
