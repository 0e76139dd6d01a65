"""TensorRT target (``--target gpu``, and ``--target jetson`` when run on a Jetson).

An ONNX stage bundle (INT8 static Q/DQ, FP16 with LayerNorm/Softmax in FP32, or FP32) becomes a
strongly typed engine through polygraphy's loaders, never a hard-coded trtexec::

    network_from_onnx_path(onnx, strongly_typed=True)
    CreateConfig(profiles=[input_ids 1x L .. max_batch x L, opt 1], tf32=False,
                 hardware_compatibility_level=AMPERE_PLUS (opt-in), version_compatible (opt-in),
                 load_timing_cache=...)
    engine_from_network(network, config, save_timing_cache=...) -> save_engine(model.engine)

Strongly typed: the graph's types are the precision plan, so no FP16/INT8 builder flags are set.
The engine is then compared with ONNX Runtime on the same ONNX through polygraphy's
``Comparator`` (tolerances recorded) and with the FP32 reference outputs of the bundle (gate).

The building and running code is shared with the on-device script
(:mod:`edgeseg.targets.jetson_kit.build_engine`), so a Jetson builds exactly as a desktop GPU does.
Nothing here imports tensorrt at module level; without TensorRT or without a GPU the build stops
with one line (:data:`TENSORRT_MISSING`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.bundle import (
    bundle_writer,
    copy_files,
    copy_into,
    finalize,
    inherited,
    load_reference,
    tool_versions,
    verify_bundle,
)
from edgeseg.errors import EdgesegError
from edgeseg.fileio import sha256_file
from edgeseg.targets.jetson_kit import KIT_FILES, SUPPORT
from edgeseg.targets.jetson_kit import build_engine as kit

log = logging.getLogger(__name__)

ENGINE_FILE = kit.ENGINE_FILE
SCRIPT_NAME = "build_engine.py"
TENSORRT_MISSING = (
    "TensorRT not found: install TensorRT 10+ with its Python bindings (pip install tensorrt, on Linux or Windows "
    "x86-64 with an NVIDIA driver) or use --target jetson to build on the device"
)
NO_GPU = "no NVIDIA GPU found (TensorRT builds need one): run on a machine with a GPU or use --target jetson to " \
         "build on the device"
#: DequantizeLinear consumers that TensorRT runs as INT8 kernels on the INT8 weights (fused Q/DQ)
FUSED_DQ_CONSUMERS = ("MatMul", "Gemm", "Conv", "ConvTranspose")
ENGINE_WEIGHT_ASSUMPTION = (
    "estimated from the ONNX, not measured (TensorRT did not run): a constant whose DequantizeLinear feeds only "
    "MatMul/Gemm/Conv stays INT8 in the engine (fused Q/DQ); a DequantizeLinear of a constant feeding anything else "
    "(the token-embedding Gather) is assumed folded at build time into a float constant of its scale's type (FP32, "
    "4 bytes per element); every other initializer keeps its ONNX type")
_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2, 17: 1}
#: polygraphy Comparator tolerances, engine vs ONNX Runtime on the same ONNX (memory; the mask must be equal)
COMPARE_TOLERANCES = {
    "fp32": {"atol": 1e-3, "rtol": 1e-3, "check_error_stat": "max"},
    "fp16": {"atol": 1e-2, "rtol": 1e-2, "check_error_stat": "mean"},
    "int8": {"atol": 5e-2, "rtol": 5e-2, "check_error_stat": "mean"},
}


def import_tensorrt():
    """The tensorrt module, or None (absent, or PyPI's stub without libraries)."""
    return kit.import_tensorrt()


def require_tensorrt(gpu_probe: Callable[[], dict | None] = kit.gpu_info) -> tuple[Any, dict]:
    """(tensorrt module, GPU facts) or an :class:`EdgesegError` with one line saying what is missing."""
    trt = import_tensorrt()
    if trt is None:
        raise EdgesegError(TENSORRT_MISSING)
    version = getattr(trt, "__version__", "0")
    if kit.tensorrt_version_tuple(version) < kit.MIN_TENSORRT:
        raise EdgesegError(f"TensorRT {version} is too old: strongly typed networks with int64 ids need TensorRT 10+; "
                           "upgrade, or use --target jetson to build on the device")
    gpu = gpu_probe()
    if gpu is None:
        raise EdgesegError(NO_GPU)
    return trt, gpu


def builder_options(hardware_compatible: bool = False, version_compatible: bool = False,
                    workspace_mib: int | None = None, optimization_level: int | None = None,
                    gpu: dict | None = None, on_jetson: bool = False) -> dict[str, Any]:
    """The builder options recorded in the manifest (and read back by the on-device script)."""
    if hardware_compatible:
        if on_jetson:
            raise EdgesegError("--hardware-compatible (Ampere+ engines) is not available on Jetson; drop it")
        if gpu is not None and tuple(int(x) for x in gpu["compute_capability"].split(".")) < (8, 0):
            raise EdgesegError(f"--hardware-compatible needs an Ampere or newer GPU to build on; this is sm "
                               f"{gpu['compute_capability']}")
    if optimization_level is not None and not 0 <= optimization_level <= 5:
        raise EdgesegError(f"--builder-optimization-level must be 0..5, got {optimization_level}")
    return {
        "strongly_typed": True,
        "tf32": False,
        "hardware_compatibility": "ampere_plus" if hardware_compatible else "none",
        "version_compatible": bool(version_compatible),
        "workspace_mib": workspace_mib,
        "builder_optimization_level": optimization_level,
    }


def engine_gate(manifest: dict[str, Any]) -> dict[str, float]:
    """Engine (and host ONNX Runtime) vs FP32 reference gate: the per-precision default, lowered to the
    bundle's own INT8/FP16 fidelity gate when that was set lower (the user accepted that fidelity)."""
    gate = dict(kit.DEFAULT_GATES[manifest["precision"]])
    own = (manifest.get("fidelity") or {}).get("gate") or {}
    for key in gate:
        if isinstance(own.get(key), (int, float)):
            gate[key] = min(gate[key], float(own[key]))
    return gate


def engine_section(stage_manifest: dict[str, Any], max_batch: int, options: dict[str, Any],
                   built: bool, onnx_name: str = "model.onnx") -> dict[str, Any]:
    """The manifest's ``engine`` section: what to build and how to check it (read by build_engine.py)."""
    if max_batch < 1:
        raise EdgesegError(f"--max-batch must be at least 1, got {max_batch}")
    precision = stage_manifest["precision"]
    return {
        "file": ENGINE_FILE,
        "onnx": onnx_name,
        "built": built,
        "script": SCRIPT_NAME,
        "max_batch": max_batch,
        "profile": kit.profile_shapes(int(stage_manifest["context_length"]), max_batch),
        "builder_options": options,
        "network": "strongly typed from ONNX types: " + {
            "int8": "INT8 from explicit Q/DQ (symmetric, zero point 0), the rest FP32",
            "fp16": "FP16, LayerNormalization and Softmax FP32", "fp32": "FP32 (TF32 off)"}[precision],
        "verify_gate": engine_gate(stage_manifest),
        "requires": "TensorRT >= 10 (JetPack 6.1+ / 7.x on Jetson)",
    }


def copy_kit(directory: Path) -> None:
    """Copy the on-device kit (build_engine.py, trt_lint.py, trt_support.json) into a bundle directory."""
    for path in KIT_FILES:
        copy_into(directory, path)
    os.chmod(directory / SCRIPT_NAME, 0o755)


def check_lint_version(version: str | None) -> str:
    """``--tensorrt-version``: a version the kit has a support matrix for (None: the kit's default)."""
    from edgeseg.targets.jetson_kit import trt_lint

    support = trt_lint.load_support()
    known = trt_lint.known_versions(support)
    if version is not None and version not in known:
        raise EdgesegError(f"--tensorrt-version {version}: the kit has support matrices for {', '.join(known)}")
    return version or support["default_version"]


def lint_stage(stage: Path, manifest: dict[str, Any], version: str | None = None) -> dict[str, Any]:
    """Lint the stage's ONNX against TensorRT ``version``'s support matrix (and record every other
    version the kit knows); a graph outside the chosen matrix raises one line naming node, op, type."""
    from edgeseg.targets.jetson_kit import trt_lint

    version = check_lint_version(version)
    support = trt_lint.load_support()
    model = manifest["model"]
    results = trt_lint.lint_versions(stage / model, None, support)
    chosen = results[version]
    if not chosen.passed:
        raise EdgesegError(f"TensorRT lint: {model} is {chosen.summary()}")
    return {
        **chosen.record(),
        "model": model, "model_sha256": manifest["files"][model]["sha256"],
        "support_data": {"file": SUPPORT.name, "sha256": sha256_file(SUPPORT)},
        "all_versions": {v: {"passed": r.passed, "errors": len(r.errors),
                             "first_error": r.errors[0].line() if r.errors else None} for v, r in results.items()},
        "checked": "ONNX shape/type inference against the transcribed support matrix; TensorRT did not run",
    }


def engine_weight_estimate(onnx_path: Path) -> dict[str, Any]:
    """Bytes of weights the engine is expected to hold (see :data:`ENGINE_WEIGHT_ASSUMPTION`)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, list[tuple[Any, int]]] = {}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            uses.setdefault(name, []).append((node, index))
    kinds = {"int8_fused": 0, "dequantized_to_float": 0, "float": 0, "other": 0}
    kept_int8 = 0  # the dequantized constants, if TensorRT kept them INT8 (dequantizing on every run)
    for init in inits.values():
        count = int(np.prod(init.dims)) if init.dims else 1
        dequantized = [n for n, i in uses.get(init.name, []) if n.op_type == "DequantizeLinear" and i == 0]
        readers = [n for d in dequantized for n, _ in uses.get(d.output[0], [])]
        if dequantized and readers and all(n.op_type in FUSED_DQ_CONSUMERS for n in readers):
            kinds["int8_fused"] += count * _ITEMSIZE.get(init.data_type, 4)
        elif dequantized:
            scale = inits.get(dequantized[0].input[1])
            kinds["dequantized_to_float"] += count * _ITEMSIZE.get(scale.data_type if scale else 1, 4)
            kept_int8 += count * _ITEMSIZE.get(init.data_type, 1)
        else:
            kind = "float" if init.data_type in (1, 10, 11, 16) else "other"
            kinds[kind] += count * _ITEMSIZE.get(init.data_type, 4)
    total = sum(kinds.values())
    return {"expected_engine_weight_bytes": total, "by_kind": kinds,
            "if_dequantize_not_folded_bytes": total - kinds["dequantized_to_float"] + kept_int8,
            "assumption": ENGINE_WEIGHT_ASSUMPTION}


def size_figures(directory: Path, onnx_name: str) -> dict[str, Any]:
    """Bundle bytes (every file but manifest.json) next to the expected engine weight bytes."""
    files = [p for p in directory.rglob("*") if p.is_file() and p.name != "manifest.json"]
    return {"bundle_bytes": sum(p.stat().st_size for p in files), **engine_weight_estimate(directory / onnx_name)}


def size_row(sizes: dict[str, Any]) -> tuple[str, str]:
    return ("engine", f"expected engine weights {sizes['expected_engine_weight_bytes'] / 1e6:.1f} MB (bundle "
                      f"{sizes['bundle_bytes'] / 1e6:.1f} MB): INT8 Q/DQ weights "
                      f"{sizes['by_kind']['int8_fused'] / 1e6:.1f} MB, dequantized constants "
                      f"{sizes['by_kind']['dequantized_to_float'] / 1e6:.1f} MB (assumed folded to float), "
                      f"float {sizes['by_kind']['float'] / 1e6:.1f} MB; estimated, TensorRT did not run here")


def lint_row(record: dict[str, Any]) -> tuple[str, str]:
    others = ", ".join(f"{v} {'pass' if r['passed'] else 'FAIL'}" for v, r in record["all_versions"].items())
    matrices = " and ".join(f"{m['tensorrt']}-GA" for m in record["matrices"])
    how = f"both the {matrices} matrices" if record["combine"] == "intersection" else f"the {matrices} matrix"
    return ("lint", f"{record['model']} inside TensorRT's ONNX support matrix for {record['label']} ({how}; "
                    f"{record['nodes']} nodes, {len(record['notes'])} note(s)); every kit version: {others}")


def timing_cache_path(explicit: str | os.PathLike | None = None) -> Path:
    """``--timing-cache`` or ``$XDG_CACHE_HOME/edgeseg/tensorrt-timing.cache`` (shared across builds)."""
    if explicit:
        return Path(explicit)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgeseg" / "tensorrt-timing.cache"


def reference_feeds(input_ids: np.ndarray, max_batch: int) -> list[dict[str, np.ndarray]]:
    """Comparator data: the reference ids in batches of at most ``max_batch`` (int64)."""
    return [{"input_ids": np.ascontiguousarray(b, dtype=np.int64)} for b in kit.chunks(input_ids, max_batch)]


def compare_runners(runners: Sequence[Any], feeds: list[dict[str, np.ndarray]], precision: str) -> dict[str, Any]:
    """Run polygraphy runners on ``feeds`` with ``Comparator`` and compare the first with the second.

    Returns the polygraphy verdict with the tolerances used, and each runner's outputs concatenated
    over the feeds (``outputs[runner_name] = (memory, mask)``).
    """
    from polygraphy.comparator import Comparator, CompareFunc
    from polygraphy.logger import G_LOGGER

    tol = COMPARE_TOLERANCES[precision]
    compare = CompareFunc.simple(atol={"memory": tol["atol"], "mask": 0.0}, rtol={"memory": tol["rtol"], "mask": 0.0},
                                 check_error_stat={"memory": tol["check_error_stat"], "mask": "max"})
    with G_LOGGER.verbosity(G_LOGGER.ERROR), np.errstate(divide="ignore", invalid="ignore"):
        results = Comparator.run(list(runners), data_loader=feeds)
        accuracy = Comparator.compare_accuracy(results, compare_func=compare)
    outputs = {}
    for name, iterations in results.items():
        memory = np.concatenate([np.asarray(it["memory"], dtype=np.float32) for it in iterations])
        mask = np.concatenate([np.asarray(it["mask"]).astype(bool) for it in iterations])
        outputs[name] = (memory, mask)
    names = list(outputs)
    a, b = outputs[names[0]], outputs[names[1]]
    return {
        "passed": bool(accuracy),
        "runners": names,
        "tolerances": {"memory": tol, "mask": "exact"},
        "iterations": len(feeds),
        "max_abs_diff": float(np.abs(a[0] - b[0]).max()) if a[0].size else 0.0,
        "mean_abs_diff": float(np.abs(a[0] - b[0]).mean()) if a[0].size else 0.0,
        "mask_equal": bool(np.array_equal(a[1], b[1])),
        "outputs": outputs,
    }


def trt_runner(trt, engine_path: Path, version_compatible: bool, name: str = "tensorrt"):
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    def runtime():
        rt = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        if version_compatible:
            rt.engine_host_code_allowed = True
        return rt

    return TrtRunner(EngineFromBytes(BytesFromPath(str(engine_path)), runtime=runtime), name=name)


def ort_runner(onnx_path: Path, name: str = "onnxruntime"):
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    return OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["cpu"]), name=name)


def build_engine_bundle(
    stage: str | os.PathLike,
    out: str | os.PathLike,
    target: str,
    max_batch: int,
    options: dict[str, Any],
    timing_cache: str | os.PathLike | None = None,
    extra: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
    lint_version: str | None = None,
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Lint, build, compare and write a TensorRT bundle from an ONNX stage bundle; (manifest, summary rows)."""
    say = progress or (lambda message: log.info("%s", message))
    trt, gpu = require_tensorrt()
    stage = Path(stage)
    manifest = verify_bundle(stage)
    precision = manifest["precision"]
    say(f"linting {manifest['model']} against TensorRT's ONNX support matrix")
    lint = lint_stage(stage, manifest, lint_version)
    section = engine_section(manifest, max_batch, options, built=True, onnx_name=manifest["model"])
    cache = timing_cache_path(timing_cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with bundle_writer(out) as tmp:
        copy_files(tmp, stage, manifest)
        copy_kit(tmp)
        sizes = size_figures(tmp, manifest["model"])
        say(f"building a strongly typed {precision} TensorRT {trt.__version__} engine on {gpu['name']} "
            f"(batch 1..{max_batch})")
        from polygraphy.logger import G_LOGGER

        start = time.perf_counter()
        with G_LOGGER.verbosity(G_LOGGER.WARNING):
            kit.build_polygraphy(trt, tmp / manifest["model"], tmp / ENGINE_FILE, section, str(cache))
        build_s = time.perf_counter() - start
        comparison, verification, latency = _check_engine(trt, tmp, stage, manifest, max_batch, options, say)
        stamps = {
            "version": trt.__version__, "builder": "polygraphy", "kit_version": kit.KIT_VERSION, "gpu": gpu,
            "l4t": kit.l4t_release() if target == "jetson" else None, "built": kit.now(),
            "build_seconds": round(build_s, 1), "timing_cache": str(cache),
            "comparison": {**comparison, "vs": "onnxruntime CPU on the same ONNX"},
            "verification": {**verification, "vs": "reference.npz (FP32)"}, "latency_ms": latency,
        }
        new = inherited(manifest)
        new.update({"target": target, "backend": "tensorrt", "model": ENGINE_FILE, "engine": section,
                    "tensorrt": stamps, "tensorrt_lint": lint, "sizes": sizes, **(extra or {}),
                    "tools": tool_versions("onnx", "onnxruntime", "numpy", "polygraphy", "tensorrt")})
        result = finalize(tmp, new)
    return result, _engine_rows(result, trt.__version__, gpu, max_batch, build_s, comparison, verification,
                                latency, precision) + [lint_row(lint), size_row(sizes)]


def _check_engine(trt, tmp: Path, stage: Path, manifest: dict[str, Any], max_batch: int, options: dict[str, Any],
                  say) -> tuple[dict[str, Any], dict[str, Any], dict[str, float]]:
    """The built engine vs ONNX Runtime (polygraphy Comparator) and vs the FP32 reference; its latency."""
    say("comparing the engine with ONNX Runtime (polygraphy Comparator) on the reference prompts")
    reference = load_reference(stage, manifest)
    version_compatible = bool(options.get("version_compatible"))
    comparison = compare_runners(
        [trt_runner(trt, tmp / ENGINE_FILE, version_compatible), ort_runner(tmp / manifest["model"])],
        reference_feeds(reference["input_ids"], max_batch), manifest["precision"])
    memory, mask = comparison.pop("outputs")["tensorrt"]
    verification = kit.verify_outputs(memory, mask, reference, engine_gate(manifest))
    if not comparison["passed"] or not verification["passed"]:
        raise EdgesegError(
            f"the TensorRT engine does not match: vs ONNX Runtime {'ok' if comparison['passed'] else 'FAILED'} "
            f"(max abs diff {comparison['max_abs_diff']:.3g}); vs FP32 reference mean cosine "
            f"{verification.get('mean_cosine', float('nan')):.5f}, worst {verification.get('worst_cosine', 0):.5f}")
    latency = {}
    with trt_runner(trt, tmp / ENGINE_FILE, version_compatible) as runner:
        for batch in sorted({1, max_batch}):
            feed = {"input_ids": kit.batch_for_latency(reference["input_ids"], batch)}
            times = []
            for i in range(60):
                t0 = time.perf_counter()
                runner.infer(feed)
                if i >= 10:
                    times.append(time.perf_counter() - t0)
            latency[f"batch_{batch}"] = float(np.median(times) * 1e3)
    return comparison, verification, latency


def _engine_rows(result: dict[str, Any], version: str, gpu: dict, max_batch: int, build_s: float,
                 comparison: dict[str, Any], verification: dict[str, Any], latency: dict[str, float],
                 precision: str) -> list[tuple[str, str]]:
    engine_mb = result["files"][ENGINE_FILE]["bytes"] / 1e6
    tol = COMPARE_TOLERANCES[precision]
    return [
        ("target", f"{ENGINE_FILE} ({engine_mb:.1f} MB): TensorRT {version}, {gpu['name']} "
                   f"(sm {gpu['compute_capability']}), profile batch 1..{max_batch} opt 1, built in {build_s:.0f} s"),
        ("compare", f"vs ONNX Runtime: {'PASS' if comparison['passed'] else 'FAIL'} (max abs diff "
                    f"{comparison['max_abs_diff']:.2e}, {tol['check_error_stat']} tolerance {tol['atol']})"),
        ("check", f"vs FP32 reference: mean cos {verification['mean_cosine']:.5f}, worst "
                  f"{verification['worst_cosine']:.5f}; latency " + ", ".join(
                      f"{k.replace('_', ' ')} {v:.2f} ms" for k, v in latency.items())),
    ]
