"""``edgeseg build``: one command from an encoder (or a bundle) to a deployable bundle for a target.

Stages, each a bundle (written in a work folder beside ``out`` and removed afterwards)::

    --encoder: export (FP32 ONNX) -> quantize (int8: static Q/DQ) | fp16 (FP16 ONNX) -> target step
    --bundle:  starts at the stage the bundle is at (FP32 -> quantize/fp16; INT8 static or FP16 -> target)
    coreml:    converts the torch encoder directly (--encoder only)

Targets: ``onnx`` (ONNX Runtime), ``gpu`` (TensorRT engine built here), ``jetson`` (the ONNX plus
``build_engine.py`` that builds the engine on the device; built directly when run on a Jetson),
``coreml`` (``model.mlpackage``). The result is always a bundle with a manifest; each step adds
summary rows that the CLI prints.

Prerequisites are checked first (:func:`preflight`), so ``--target gpu`` without TensorRT or a GPU
stops in a second with one line, before any export or calibration.

TensorRT targets (``gpu``, ``jetson``) get the INT8 token embedding in the form TensorRT's ONNX
support matrix allows (``DequantizeLinear -> Gather``, :data:`EMBEDDING_FORM`), ``onnx`` keeps the
``Gather -> Cast -> Mul`` form ONNX Runtime runs fastest; and their final graph is linted against
the support matrix of ``--tensorrt-version`` (default: the kit's oldest, 10.3) before the target
step: a node outside it stops the build with one line naming node, op and type.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeseg.bundle import check_bundle_target, model_files, verify_bundle
from edgeseg.errors import EdgesegError
from edgeseg.fileio import work_dir

log = logging.getLogger(__name__)

TARGETS = ("onnx", "gpu", "jetson", "coreml")
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_PRECISION = {"onnx": "int8", "gpu": "int8", "jetson": "int8", "coreml": "fp16"}
DEFAULT_MAX_BATCH = 8
#: how each target reads an INT8 token-embedding table (:data:`edgeseg.quantize.EMBEDDING_FORMS`)
EMBEDDING_FORM = {"onnx": "gather_cast_mul", "gpu": "dequantize_gather", "jetson": "dequantize_gather"}


@dataclass
class EngineOptions:
    """TensorRT builder options (gpu, and jetson when the engine is built)."""

    hardware_compatible: bool = False
    version_compatible: bool = False
    workspace_mib: int | None = None
    optimization_level: int | None = None
    timing_cache: str | None = None
    #: the TensorRT version whose ONNX support matrix the graph must be inside (None: the kit's default)
    tensorrt_version: str | None = None


@dataclass
class Prompts:
    """Reference prompts (stored in the bundle), calibration and evaluation prompts (int8 / fp16 gates)."""

    reference: Sequence[str]
    calibration: Sequence[str] | None = None
    calibration_name: str = "calibration"
    evaluation: Sequence[str] | None = None
    #: INT8 step: keep the token-embedding table FP32 (default: INT8 rows, read as EMBEDDING_FORM[target])
    float_embedding: bool = False
    #: Core ML: prompts whose outputs the bundle ships in a prompt bank (edgeseg.bank), and its dtype
    bank: Sequence[str] | None = None
    bank_dtype: str = "float32"


@dataclass
class BuildResult:
    manifest: dict[str, Any]
    rows: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> list[str]:
        width = max((len(k) for k, _ in self.rows), default=0)
        return [f"  {k.ljust(width)}  {v}" for k, v in self.rows]


def resolve_precision(target: str, precision: str | None, bundle_manifest: dict[str, Any] | None = None) -> str:
    if precision is None:
        if bundle_manifest is not None and target != "coreml":
            return bundle_manifest["precision"]
        return DEFAULT_PRECISION[target]
    if precision not in PRECISIONS:
        raise EdgesegError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


def check_tensorrt_version(target: str, version: str | None) -> None:
    """``--tensorrt-version`` must name a matrix the kit has, and applies to the TensorRT targets only."""
    if version is None:
        return
    if target not in ("gpu", "jetson"):
        raise EdgesegError("--tensorrt-version applies to --target gpu and jetson")
    from edgeseg.targets.tensorrt import check_lint_version

    check_lint_version(version)


def preflight(target: str, precision: str, from_bundle: bool, w8a8: bool = False,
              jetson_probe: Callable[[], bool] | None = None, tensorrt_version: str | None = None,
              bank: bool = False) -> dict[str, Any]:
    """Check what the target needs before any work; raises :class:`EdgesegError` with one line."""
    if target not in TARGETS:
        raise EdgesegError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if w8a8 and target != "coreml":
        raise EdgesegError("--w8a8 applies to --target coreml only")
    if bank and target != "coreml":
        raise EdgesegError("--bank-prompts applies to --target coreml (for other bundles: edgeseg bank build)")
    check_tensorrt_version(target, tensorrt_version)
    facts: dict[str, Any] = {"on_jetson": False}
    if target == "coreml":
        if from_bundle:
            raise EdgesegError("--target coreml converts the torch encoder: give --encoder NAME (and --checkpoint), "
                               "not --bundle")
        from edgeseg.targets.coreml import require_coremltools

        if w8a8 and precision != "int8":
            raise EdgesegError("--w8a8 quantizes activations on top of 8-bit weights: use it with --precision int8")
        require_coremltools()
    elif target == "gpu":
        from edgeseg.targets.tensorrt import require_tensorrt

        facts["trt"], facts["gpu"] = require_tensorrt()
    elif target == "jetson":
        from edgeseg.targets.jetson import is_jetson

        facts["on_jetson"] = (jetson_probe or is_jetson)()
        if facts["on_jetson"]:
            from edgeseg.targets.tensorrt import require_tensorrt

            facts["trt"], facts["gpu"] = require_tensorrt()
    return facts


def stage_plan(manifest: dict[str, Any], precision: str, target: str) -> list[str]:
    """Steps needed to bring an ONNX bundle to ``precision`` for ``target``: [], ["quantize"] or ["fp16"]."""
    have = manifest["precision"]
    if manifest["backend"] != "onnxruntime":
        raise EdgesegError(f"this is a {manifest['backend']} bundle (target {manifest['target']}); build from an "
                           "ONNX bundle (edgeseg export / quantize) or from --encoder")
    if have == precision:
        mode = (manifest.get("quantization") or {}).get("mode")
        if precision == "int8" and mode != "static" and target in ("gpu", "jetson"):
            raise EdgesegError(f"this INT8 bundle is '{mode}' quantized (ONNX Runtime's CPU kernels); TensorRT needs "
                               "static Q/DQ: edgeseg quantize --mode static, or build from the FP32 bundle")
        form = (manifest.get("quantization") or {}).get("embedding_form")
        if precision == "int8" and target in ("gpu", "jetson") and form not in (None, EMBEDDING_FORM[target]):
            raise EdgesegError(f"this INT8 bundle reads its embedding as {form} (ONNX Runtime's form, INT8 outside "
                               f"Q/DQ, which TensorRT 10 refuses): edgeseg quantize --embedding-form "
                               f"{EMBEDDING_FORM[target]}, or build from the FP32 bundle")
        return []
    if have == "fp32":
        return ["quantize"] if precision == "int8" else ["fp16"]
    raise EdgesegError(f"this bundle is {have}; a {precision} build starts from the FP32 bundle (edgeseg export) "
                       "or from --encoder")


def build(
    target: str,
    out: str | os.PathLike,
    *,
    model=None,
    bundle: str | os.PathLike | None = None,
    precision: str | None = None,
    prompts: Prompts,
    source: dict[str, Any] | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    opset: int = 17,
    method: str = "minmax",
    gate=None,
    engine: EngineOptions | None = None,
    w8a8: bool = False,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
    facts: dict[str, Any] | None = None,
) -> BuildResult:
    """Build ``target`` from a torch ``model`` or an ONNX ``bundle`` into the bundle ``out``."""
    say = progress or (lambda message: log.info("%s", message))
    if (model is None) == (bundle is None):
        raise EdgesegError("give exactly one of --encoder NAME or --bundle DIR")
    if max_batch < 1:
        raise EdgesegError(f"--max-batch must be at least 1, got {max_batch}")
    out = check_bundle_target(out)
    engine = engine or EngineOptions()
    bundle_manifest = verify_bundle(bundle) if bundle is not None else None
    precision = resolve_precision(target, precision, bundle_manifest)
    facts = facts if facts is not None else preflight(target, precision, bundle is not None, w8a8,
                                                      tensorrt_version=engine.tensorrt_version, bank=bool(prompts.bank))
    name = model.name if model is not None else bundle_manifest["encoder"]
    context = model.context_length if model is not None else bundle_manifest["context_length"]
    header = _header(name, out, target, precision, max_batch, context)
    build_info = {"build": {"target": target, "precision": precision, "max_batch": max_batch,
                            "from": "encoder" if model is not None else f"bundle ({bundle_manifest['precision']})",
                            "stages": []}}
    if target == "coreml":
        from edgeseg.targets.coreml import coreml_bundle

        build_info["build"]["stages"] = ["coreml"]
        manifest, target_rows = coreml_bundle(model, out, precision, max_batch, prompts.reference, source or {},
                                              w8a8=w8a8, extra=build_info, progress=say,
                                              calibration=prompts.calibration, evaluation=prompts.evaluation,
                                              calibration_name=prompts.calibration_name,
                                              bank=prompts.bank, bank_dtype=prompts.bank_dtype)
        return BuildResult(manifest, header + target_rows + _size_rows(manifest))

    with work_dir(out) as work:  # named as atomic writes' temporaries: a killed run's is removed by the next
        stage, stage_manifest, rows = _onnx_stages(target, work, model, bundle, bundle_manifest, precision, prompts,
                                                   source, opset, method, gate, threads, build_info, say)
        build_info["build"]["stages"].append(target)
        manifest, target_rows = _target_step(target, stage, out, max_batch, engine, facts, build_info, threads, say)
    rows = header + rows + target_rows + _size_rows(manifest)
    return BuildResult(manifest, [r for r in rows if r[0] != "next"] + [r for r in rows if r[0] == "next"])


def _onnx_stages(target: str, work: Path, model, bundle, bundle_manifest, precision: str, prompts: Prompts, source,
                 opset: int, method: str, gate, threads, build_info: dict[str, Any], say):
    """Export (or take the bundle), then quantize / FP16 as needed; (stage dir, its manifest, summary rows)."""
    rows: list[tuple[str, str]] = []
    if model is not None:
        from edgeseg.export import export_bundle

        say(f"exporting {model.name} to FP32 ONNX (opset {opset})")
        stage = work / "fp32"
        stage_manifest = export_bundle(model, stage, prompts.reference, source or {}, opset=opset)
        build_info["build"]["stages"].append("export")
        rows.append(("export", f"FP32 ONNX opset {opset}; ONNX Runtime vs torch max abs diff "
                               f"{stage_manifest['export']['max_abs_diff']:.1e}"))
    else:
        stage, stage_manifest = Path(bundle), bundle_manifest
        rows.append(("bundle", f"{stage} ({stage_manifest['precision']}, {stage_manifest['target']})"))
    for step in stage_plan(stage_manifest, precision, target):
        build_info["build"]["stages"].append(step)
        if step == "quantize":
            stage, stage_manifest = _quantize(stage, work, prompts, method, gate, threads, say,
                                              EMBEDDING_FORM.get(target, EMBEDDING_FORM["onnx"]))
            fid = stage_manifest["fidelity"]
            rows.append(("quantize", f"INT8 static Q/DQ ({method}, {stage_manifest['calibration']['count']} "
                                     f"prompts): mean cos {fid['mean_cosine']:.5f}, worst "
                                     f"{fid['worst_cosine']:.5f} on {fid['prompts']} eval prompts; "
                                     f"{len(stage_manifest['excluded_layers'])} layer(s) kept float; embedding "
                                     f"{stage_manifest['quantization']['embedding_form'] or 'float32'}"))
            continue
        from edgeseg.targets.fp16 import fp16_bundle

        if not prompts.evaluation:
            raise EdgesegError("the FP16 step needs evaluation prompts")
        new = work / "fp16"
        stage_manifest = fp16_bundle(stage, new, prompts.evaluation, gate, threads, say)
        stage = new
        fid = stage_manifest["fidelity"]
        rows.append(("fp16", f"FP16 ONNX, LayerNorm/Softmax FP32: mean cos {fid['mean_cosine']:.6f}, worst "
                             f"{fid['worst_cosine']:.6f} on {fid['prompts']} eval prompts (ORT CPU)"))
    return stage, stage_manifest, rows


def _target_step(target: str, stage: Path, out: Path, max_batch: int, engine: EngineOptions, facts: dict[str, Any],
                 build_info: dict[str, Any], threads, say):
    options = _engine_options(target, engine, facts)
    if target == "onnx":
        from edgeseg.targets.onnx import onnx_bundle

        return onnx_bundle(stage, out, max_batch, build_info, threads, say)
    from edgeseg.targets.jetson import device_bundle, on_device_bundle
    from edgeseg.targets.tensorrt import build_engine_bundle

    if target == "gpu":
        return build_engine_bundle(stage, out, "gpu", max_batch, options, engine.timing_cache, build_info, say,
                                   engine.tensorrt_version)
    if facts.get("on_jetson"):
        return on_device_bundle(stage, out, max_batch, options, engine.timing_cache, build_info, say,
                                engine.tensorrt_version)
    return device_bundle(stage, out, max_batch, options, build_info, threads, say, engine.tensorrt_version)


def _quantize(stage: Path, work: Path, prompts: Prompts, method: str, gate, threads, say, embedding_form: str):
    from edgeseg.quantize import Gate, quantize_bundle

    if not prompts.calibration or not prompts.evaluation:
        raise EdgesegError("INT8 needs calibration and evaluation prompts")
    new = work / "int8"
    manifest = quantize_bundle(stage, new, prompts.calibration, prompts.evaluation,
                               calibration_name=prompts.calibration_name, method=method, mode="static",
                               gate=gate or Gate(), embedding_int8=not prompts.float_embedding, threads=threads,
                               progress=say, embedding_form=embedding_form)
    return new, manifest


def _engine_options(target: str, engine: EngineOptions, facts: dict[str, Any]) -> dict[str, Any]:
    if target not in ("gpu", "jetson"):
        if engine.hardware_compatible or engine.version_compatible:
            raise EdgesegError("--hardware-compatible / --version-compatible apply to --target gpu and jetson")
        return {}
    from edgeseg.targets.tensorrt import builder_options

    return builder_options(engine.hardware_compatible, engine.version_compatible, engine.workspace_mib,
                           engine.optimization_level, gpu=facts.get("gpu"),
                           on_jetson=target == "jetson")


def _header(name: str, out: Path, target: str, precision: str, max_batch: int, context: int) -> list[tuple[str, str]]:
    return [("build", f"{name} -> {out} (target {target}, {precision}, batch 1..{max_batch}, context {context})")]


def _size_rows(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    files = manifest["files"]
    total = sum(f["bytes"] for f in files.values())
    model = manifest["model"]
    if model.endswith(".mlpackage/Manifest.json"):
        package = model.rsplit("/", 1)[0] + "/"
        model_bytes = sum(f["bytes"] for n, f in files.items() if n.startswith(package))
        model = package.rstrip("/")
    else:
        model_bytes = sum(files[name]["bytes"] for name in model_files(manifest) if name in files)
    return [("size", f"{total / 1e6:.1f} MB in {len(files)} files ({model} {model_bytes / 1e6:.1f} MB); "
                     f"manifest.json lists every sha256")]
