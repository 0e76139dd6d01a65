"""Jetson target: a self-contained bundle that builds and checks its TensorRT engine on the device.

Off the device (no ``/etc/nv_tegra_release``), ``edgeseg build --target jetson`` writes a bundle with
the TensorRT-ready ONNX (INT8 Q/DQ, FP16 or FP32), the tokenizer vocabulary, the reference inputs
and FP32 outputs, the manifest with an ``engine`` section (profile, builder options, gate) and the
kit: ONE script, ``build_engine.py`` (numpy + TensorRT/polygraphy only, see
:mod:`edgeseg.targets.jetson_kit.build_engine`), with ``trt_lint.py`` + ``trt_support.json``, the
static check against TensorRT's ONNX support matrix that ran here before writing (the manifest's
``tensorrt_lint``) and that the script runs again on the device before it builds. The bundle's
model is the ONNX (backend ``onnxruntime``) until the script has built and verified
``model.engine`` on the Jetson and named it as the model (backend ``tensorrt``). Before writing,
the ONNX is run with ONNX Runtime on this host against the recorded outputs.

On a Jetson, the same command builds and verifies the engine directly (the gpu path).

Supported: JetPack 6.1/6.2 (L4T R36.4, TensorRT 10.3) and JetPack 7.x (L4T R38, TensorRT 10.13+).
JetPack 6.0 (TensorRT 8.6) has neither strongly typed networks nor int64 inputs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeseg import trtprobe
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
from edgeseg.runtime.onnxruntime import cpu_session
from edgeseg.targets import tensorrt as trt_target
from edgeseg.targets.jetson_kit import build_engine as kit

log = logging.getLogger(__name__)

TEGRA_RELEASE = trtprobe.TEGRA_RELEASE
JETPACK = {
    "supported": ["JetPack 6.1 / 6.2 (L4T R36.4, TensorRT 10.3)", "JetPack 7.x (L4T R38, TensorRT 10.13+)"],
    "unsupported": "JetPack 6.0 and older (TensorRT 8.6: no strongly typed networks, no int64 inputs)",
}


def is_jetson(release_file: str | os.PathLike | None = None) -> bool:
    return Path(release_file or TEGRA_RELEASE).exists()


def host_check(bundle_dir: Path, manifest: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
    """The bundle's ONNX in ONNX Runtime (CPU) on its reference ids vs the recorded FP32 outputs.

    The gate is the one ``build_engine.py`` applies to the engine on the device.
    """
    reference = load_reference(bundle_dir, manifest)
    session = cpu_session(bundle_dir / manifest["model"], threads)
    memory, mask = session.run(["memory", "mask"], {"input_ids": reference["input_ids"]})
    return kit.verify_outputs(memory, mask, reference, trt_target.engine_gate(manifest))


def device_bundle(
    stage: str | os.PathLike,
    out: str | os.PathLike,
    max_batch: int,
    options: dict[str, Any],
    extra: dict[str, Any] | None = None,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
    lint_version: str | None = None,
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Write the on-device bundle (ONNX + the kit) from an ONNX stage bundle; (manifest, rows).

    The ONNX is linted against TensorRT ``lint_version``'s support matrix first (default: the kit's
    oldest, 10.3) and run with ONNX Runtime against its recorded FP32 outputs."""
    say = progress or (lambda message: log.info("%s", message))
    stage = Path(stage)
    manifest = verify_bundle(stage)
    say(f"linting {manifest['model']} against TensorRT's ONNX support matrix")
    lint = trt_target.lint_stage(stage, manifest, lint_version)
    section = trt_target.engine_section(manifest, max_batch, options, built=False, onnx_name=manifest["model"])
    with bundle_writer(out) as tmp:
        copy_files(tmp, stage, manifest)
        trt_target.copy_kit(tmp)
        sizes = trt_target.size_figures(tmp, manifest["model"])
        say("checking the ONNX with ONNX Runtime on this host against the recorded FP32 outputs")
        check = host_check(tmp, manifest, threads)
        if not check["passed"]:
            raise EdgesegError(f"the Jetson bundle's ONNX does not match its reference outputs in ONNX Runtime "
                               f"({check['reason']}: mean cosine {check.get('mean_cosine', float('nan')):.5f}, worst "
                               f"{check.get('worst_cosine', float('nan')):.5f})")
        new = inherited(manifest)
        new.update({
            "target": "jetson",
            "backend": "onnxruntime",  # until build_engine.py names model.engine (backend tensorrt)
            "engine": section,
            "jetson": {"command": f"python3 {trt_target.SCRIPT_NAME}", "jetpack": JETPACK,
                       "builders": "polygraphy if importable, else trtexec --stronglyTyped "
                                   "(/usr/src/tensorrt/bin/trtexec or PATH)"},
            "host_check": {**check, "runtime": "onnxruntime CPU", "vs": "reference.npz (FP32)"},
            "tensorrt_lint": lint,
            "sizes": sizes,
            **(extra or {}),
            "tools": tool_versions("onnx", "onnxruntime", "numpy"),
        })
        result = finalize(tmp, new)
    profile = section["profile"]["input_ids"]
    rows = [
        ("target", f"{manifest['model']} + {trt_target.SCRIPT_NAME}: engine built on the Jetson (strongly typed, "
                   f"profile {kit.shape_arg(profile['min'])}..{kit.shape_arg(profile['max'])}, opt "
                   f"{kit.shape_arg(profile['opt'])})"),
        ("check", f"ONNX Runtime here vs FP32 reference ({check['prompts']} prompts): mean cos "
                  f"{check['mean_cosine']:.5f}, worst {check['worst_cosine']:.5f}, mask "
                  f"{'equal' if check['mask_equal'] else 'DIFFERS'}"),
        trt_target.lint_row(lint),
        trt_target.size_row(sizes),
        ("next", f"copy {Path(out).name}/ to the Jetson (JetPack 6.1+/7.x) and run: cd {Path(out).name} && "
                 f"python3 {trt_target.SCRIPT_NAME}"),
    ]
    return result, rows


def on_device_bundle(stage, out, max_batch, options, timing_cache=None, extra=None, progress=None,
                     lint_version=None):
    """On a Jetson: lint, build and verify the engine here (the gpu path), stamped with the L4T release."""
    if options.get("hardware_compatibility") != "none":
        raise EdgesegError("--hardware-compatible is not available on Jetson")
    extra = {**(extra or {}), "jetson": {"l4t": trtprobe.l4t_release(), "jetpack": JETPACK,
                                         "command": f"python3 {trt_target.SCRIPT_NAME} (rebuild)"}}
    return trt_target.build_engine_bundle(stage, out, "jetson", max_batch, options, timing_cache, extra, progress,
                                          lint_version)
