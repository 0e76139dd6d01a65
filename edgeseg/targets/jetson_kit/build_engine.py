#!/usr/bin/env python3
"""Build and verify the TensorRT engine of an edgeseg bundle, on the device that will run it.

Copy the bundle folder to the Jetson (or any machine with an NVIDIA GPU and TensorRT 10+), then::

    cd BUNDLE && python3 build_engine.py            # build model.engine, verify it, add it to the bundle
    python3 build_engine.py --dry-run               # print the plan and the commands; build nothing

What it does:

1. checks every file of the bundle against the sha256 in ``manifest.json``;
2. lints the ONNX against the ONNX support matrix of this device's TensorRT version
   (``trt_lint.py`` + ``trt_support.json``, next to this script; needs ``pip3 install onnx``) and
   stops (exit 2) on a node outside it. Without the ``onnx`` package it uses the lint the host
   recorded in the manifest for this very file (its sha256 was just checked) against the same
   TensorRT version, and stops if there is none; ``--skip-lint`` builds without any lint;
3. builds a strongly typed engine from the bundle's ONNX (INT8 from explicit Q/DQ, or the FP16/FP32
   graph as typed) with one optimization profile ``input_ids`` [1..max_batch, L] (opt batch 1):
   with polygraphy's loaders when ``import polygraphy`` works (``pip3 install polygraphy``),
   otherwise with ``trtexec --stronglyTyped`` (``/usr/src/tensorrt/bin/trtexec`` on JetPack, or
   ``trtexec`` on PATH, or ``--trtexec PATH``); ``--builder`` forces one;
4. runs the bundle's reference token ids (``reference.npz``: input_ids, memory, mask) through the
   engine and compares with the recorded FP32 outputs: the mask must match exactly and the mean /
   worst per-prompt token cosine must meet the gate in the manifest; prints PASS or FAIL and the
   latency at batch 1 and at the largest batch;
5. on PASS, adds ``model.engine`` to the bundle: the manifest then names it as the model (backend
   ``tensorrt``) with the TensorRT version, GPU, L4T release and verification results.

Needs Python 3.8+, numpy, and TensorRT 10 or newer (JetPack 6.1+ or 7.x): strongly typed networks and
int64 inputs do not exist in TensorRT 8.6 (JetPack 6.0). Never imports torch or edgeseg.
Exit status: 0 verified, 1 built but verification failed, 2 could not build (bundle, TensorRT, GPU).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np


def _checker_beside():
    """The copy of edgeseg/bundlecheck.py (standard library only) that edgeseg ships beside this script."""
    path = Path(__file__).with_name("bundlecheck.py")
    if not path.is_file():
        sys.exit("build_engine: error: bundlecheck.py is missing beside this script; rebuild the bundle with edgeseg")
    spec = importlib.util.spec_from_file_location("bundlecheck", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __package__:  # imported as edgeseg.targets.jetson_kit.build_engine (host builds)
    from edgeseg import bundlecheck
else:  # run on the device
    bundlecheck = _checker_beside()

KIT_VERSION = 3  # 2: trt_lint.py + trt_support.json, linted before building; 3: bundlecheck.py, schema
LINT_FILE = "trt_lint.py"
ENGINE_FILE = "model.engine"
TRTEXEC_PATHS = ("/usr/src/tensorrt/bin/trtexec",)
TEGRA_RELEASE = "/etc/nv_tegra_release"
MIN_TENSORRT = (10, 0)
#: engine vs the FP32 reference (per-prompt mean token cosine over valid tokens); the manifest may override
DEFAULT_GATES = {
    "fp32": {"mean_cosine": 0.9999, "worst_cosine": 0.999},
    "fp16": {"mean_cosine": 0.999, "worst_cosine": 0.99},
    "int8": {"mean_cosine": 0.995, "worst_cosine": 0.98},
}


class KitError(Exception):
    """A problem that stops the build (exit 2), with a message for the person at the device."""


# -- bundle --------------------------------------------------------------------------------------
sha256_file = bundlecheck.sha256_file


def read_manifest(bundle: Path, check_files: bool = True) -> dict:
    """The manifest, checked by edgeseg's bundle rules (bundlecheck.py: limits, schema, file names; with
    ``check_files`` every listed file's size and sha256 and the ONNX external data too)."""
    try:
        manifest = bundlecheck.verify_bundle(bundle) if check_files else bundlecheck.read_manifest(bundle)
    except bundlecheck.BundleError as exc:
        raise KitError(str(exc)) from None
    if "engine" not in manifest:
        raise KitError(f"{bundle / 'manifest.json'} is not an edgeseg bundle with an engine plan "
                       "(edgeseg build --target jetson)")
    return manifest


def engine_plan(manifest: dict) -> dict:
    """What to build, from the manifest's ``engine`` section (written by ``edgeseg build``)."""
    plan = dict(manifest["engine"])
    length = int(manifest["context_length"])
    max_batch = int(plan.get("max_batch", 1))
    plan.setdefault("profile", profile_shapes(length, max_batch))
    plan.setdefault("builder_options", {})
    precision = manifest.get("precision", "fp32")
    plan["gate"] = dict(plan.get("verify_gate") or DEFAULT_GATES.get(precision, DEFAULT_GATES["int8"]))
    plan["precision"] = precision
    plan["context_length"] = length
    plan["max_batch"] = max_batch
    return plan


def profile_shapes(context_length: int, max_batch: int, opt_batch: int = 1) -> dict:
    """One optimization profile: dynamic batch ``1..max_batch`` (tuned for ``opt_batch``), fixed context."""
    if max_batch < 1 or not 1 <= opt_batch <= max_batch:
        raise KitError(f"bad batch range: opt {opt_batch}, max {max_batch}")
    return {"input_ids": {"min": [1, context_length], "opt": [opt_batch, context_length],
                          "max": [max_batch, context_length]}}


def shape_arg(shape) -> str:
    return "x".join(str(int(d)) for d in shape)


# -- the machine ---------------------------------------------------------------------------------
def l4t_release(path: str = TEGRA_RELEASE) -> str | None:
    """``R36.4.0`` from ``/etc/nv_tegra_release`` on a Jetson, else None."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"R{match.group(1)}.{match.group(2)}" if match else "unknown"


def gpu_info() -> dict | None:
    """Name, compute capability and driver of CUDA device 0 via the driver API (ctypes); None without one."""
    cuda = None
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if cuda is None or cuda.cuInit(0) != 0:
        return None
    count, device = ctypes.c_int(0), ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1 or \
            cuda.cuDeviceGet(ctypes.byref(device), 0) != 0:
        return None
    name = ctypes.create_string_buffer(256)
    cuda.cuDeviceGetName(name, 256, device)
    major, minor, version = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)  # ..._MINOR
    cuda.cuDriverGetVersion(ctypes.byref(version))
    memory = ctypes.c_size_t(0)
    getattr(cuda, "cuDeviceTotalMem_v2", cuda.cuDeviceTotalMem)(ctypes.byref(memory), device)
    return {
        "name": name.value.decode(errors="replace"),
        "compute_capability": f"{major.value}.{minor.value}",
        "cuda_driver_api": f"{version.value // 1000}.{(version.value % 1000) // 10}",
        "driver": nvidia_driver_version(),
        "memory_bytes": int(memory.value),
    }


def nvidia_driver_version(path: str = "/proc/driver/nvidia/version") -> str | None:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = re.search(r"Kernel Module(?: for [\w-]+)?\s+([\d.]+)", text)
    return match.group(1) if match else None


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return trt if hasattr(trt, "Builder") else None  # the PyPI stub without libraries has no Builder


def polygraphy_available() -> bool:
    try:
        import polygraphy.backend.trt  # noqa: F401
    except ImportError:
        return False
    return True


def tensorrt_version_tuple(version: str) -> tuple[int, int]:
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def find_trtexec(explicit: str | None = None, which=shutil.which, is_file=os.path.isfile) -> str | None:
    """``--trtexec``, else JetPack's ``/usr/src/tensorrt/bin/trtexec``, else ``trtexec`` on PATH."""
    if explicit:
        return explicit if is_file(explicit) else None
    for path in TRTEXEC_PATHS:
        if is_file(path):
            return path
    return which("trtexec")


def trtexec_version(text: str) -> str | None:
    """TensorRT version from trtexec's banner: ``[TensorRT v100300]`` -> ``10.3.0`` (``v8601`` -> ``8.6.1``)."""
    match = re.search(r"\[TensorRT v(\d+)\]", text)
    if not match:
        return None
    v = int(match.group(1))
    if v >= 10000:
        return f"{v // 10000}.{(v // 100) % 100}.{v % 100}"
    return f"{v // 1000}.{(v // 100) % 10}.{v % 100}"


def choose_builder(requested: str, polygraphy: bool, trt_module, trtexec: str | None) -> str:
    """``polygraphy`` (needs the tensorrt module too) if available, else ``trtexec``; or what was asked."""
    if requested in ("auto", "polygraphy") and polygraphy and trt_module is not None:
        return "polygraphy"
    if requested == "polygraphy":
        raise KitError("--builder polygraphy: polygraphy and the TensorRT Python module must both import "
                       "(pip3 install polygraphy; JetPack ships TensorRT's Python bindings)")
    if trtexec:
        return "trtexec"
    raise KitError(
        "TensorRT not found: neither polygraphy with the tensorrt module nor trtexec "
        f"({', '.join(TRTEXEC_PATHS)} or PATH) is available; install TensorRT 10+ (JetPack 6.1+), "
        "pip3 install polygraphy, or pass --trtexec PATH")


# -- the static check ----------------------------------------------------------------------------
def load_lint(directory: Path):
    """The kit's ``trt_lint`` module from ``directory`` (the bundle, or this package), or None if absent."""
    path = directory / LINT_FILE
    if not path.is_file():
        return None
    name = f"edgeseg_kit_trt_lint_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
    return sys.modules[name]


def lint_plan(lint, manifest: dict, tensorrt_version: str | None) -> str:
    """The support-matrix version to lint against: this device's TensorRT release if known, else the
    version the host linted against (the manifest's ``tensorrt_lint``), else the kit's default."""
    support = lint.load_support()
    if tensorrt_version:
        return lint.version_for(support, tensorrt_version)
    recorded = (manifest.get("tensorrt_lint") or {}).get("tensorrt_version")
    return recorded if recorded in support["tensorrt_versions"] else support["default_version"]


def run_lint(bundle: Path, manifest: dict, plan: dict, tensorrt_version: str | None, skip: bool) -> dict:
    """Lint the bundle's ONNX before building; returns the record, raises :class:`KitError` if outside."""
    if skip:
        print("lint       skipped (--skip-lint): the ONNX was not checked against TensorRT's support matrix")
        return {"skipped": True}
    lint = load_lint(bundle)
    if lint is None:
        print(f"lint       none: this bundle has no {LINT_FILE} (made by an older edgeseg)")
        return {"skipped": True, "reason": f"no {LINT_FILE} in the bundle"}
    version = lint_plan(lint, manifest, tensorrt_version)
    if lint.onnx_available():
        result = lint.lint_file(bundle / plan["onnx"], version)
        print(f"lint       {'PASS' if result.passed else 'FAIL'}: {result.summary()}")
        if not result.passed:
            raise KitError(f"TensorRT lint: {plan['onnx']} is {result.summary()}")
        return {**result.record(), "where": "device"}
    return host_lint(manifest, plan, version)


def host_lint(manifest: dict, plan: dict, version: str) -> dict:
    """Without the onnx package: the host's lint of this same file (sha256) against ``version``, if any."""
    record = manifest.get("tensorrt_lint") or {}
    same_file = record.get("model") == plan["onnx"] and \
        record.get("model_sha256") == manifest["files"].get(plan["onnx"], {}).get("sha256")
    entry = (record.get("all_versions") or {}).get(version) if same_file else None
    if entry is None:
        raise KitError(f"cannot lint {plan['onnx']}: the onnx package is not importable (pip3 install onnx) and the "
                       f"manifest holds no lint of this file for TensorRT {version}; --skip-lint builds anyway")
    if not entry["passed"]:
        raise KitError(f"TensorRT lint (recorded by the host for TensorRT {version}): {entry['first_error']}")
    print(f"lint       PASS (recorded on the host for TensorRT {version}, same sha256; the onnx package is not "
          "importable here: pip3 install onnx to re-check)")
    return {"tensorrt_version": version, "passed": True, "where": "host record (onnx not importable on the device)"}


# -- building ------------------------------------------------------------------------------------
def config_kwargs(trt, plan: dict, timing_cache: str | None) -> dict:
    """Keyword arguments of polygraphy's ``CreateConfig`` for the plan (strongly typed: no precision flags)."""
    from polygraphy.backend.trt import Profile

    profile = Profile()
    for name, shapes in plan["profile"].items():
        profile.add(name, min=tuple(shapes["min"]), opt=tuple(shapes["opt"]), max=tuple(shapes["max"]))
    options = plan.get("builder_options", {})
    kwargs = {"profiles": [profile], "tf32": bool(options.get("tf32", False))}
    if timing_cache:
        kwargs["load_timing_cache"] = timing_cache
    if options.get("hardware_compatibility") == "ampere_plus":
        kwargs["hardware_compatibility_level"] = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if options.get("version_compatible"):
        kwargs["version_compatible"] = True
        kwargs["exclude_lean_runtime"] = False
    if options.get("workspace_mib"):
        kwargs["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: int(options["workspace_mib"]) << 20}
    if options.get("builder_optimization_level") is not None:
        kwargs["builder_optimization_level"] = int(options["builder_optimization_level"])
    return kwargs


def build_polygraphy(trt, onnx_path: Path, engine_path: Path, plan: dict, timing_cache: str | None) -> None:
    """Strongly typed engine through polygraphy's loaders; writes ``engine_path``."""
    from polygraphy.backend.trt import CreateConfig, engine_from_network, network_from_onnx_path, save_engine

    network = network_from_onnx_path(str(onnx_path), strongly_typed=True)
    config = CreateConfig(**config_kwargs(trt, plan, timing_cache))
    engine = engine_from_network(network, config=config, save_timing_cache=timing_cache)
    save_engine(engine, path=str(engine_path))


def trtexec_build_command(trtexec: str, onnx_path: Path, engine_path: Path, plan: dict,
                          timing_cache: str | None) -> list[str]:
    cmd = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={engine_path}", "--stronglyTyped", "--skipInference"]
    for flag, key in (("--minShapes", "min"), ("--optShapes", "opt"), ("--maxShapes", "max")):
        cmd.append(flag + "=" + ",".join(f"{n}:{shape_arg(s[key])}" for n, s in plan["profile"].items()))
    options = plan.get("builder_options", {})
    if timing_cache:
        cmd.append(f"--timingCacheFile={timing_cache}")
    if options.get("hardware_compatibility") == "ampere_plus":
        cmd.append("--hardwareCompatibilityLevel=ampere+")
    if options.get("version_compatible"):
        cmd.append("--versionCompatible")
    if options.get("workspace_mib"):
        cmd.append(f"--memPoolSize=workspace:{int(options['workspace_mib'])}M")
    if options.get("builder_optimization_level") is not None:
        cmd.append(f"--builderOptimizationLevel={int(options['builder_optimization_level'])}")
    if not options.get("tf32", False):
        cmd.append("--noTF32")
    return cmd


def run_command(cmd: list[str], what: str) -> str:
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stdout.strip().splitlines()[-15:])
        raise KitError(f"{what} failed (exit {result.returncode}):\n{tail}")
    return result.stdout


# -- running -------------------------------------------------------------------------------------
def chunks(ids: np.ndarray, max_batch: int):
    for start in range(0, len(ids), max_batch):
        yield ids[start:start + max_batch]


class PolygraphyEngine:
    """Runs an engine with polygraphy's TrtRunner (host arrays in and out)."""

    def __init__(self, trt, engine_path: Path, version_compatible: bool = False):
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        if version_compatible:
            runtime.engine_host_code_allowed = True
        self.runner = TrtRunner(EngineFromBytes(BytesFromPath(str(engine_path)), runtime=runtime))

    def __enter__(self):
        self.runner.activate()
        return self

    def __exit__(self, *exc):
        self.runner.deactivate()

    def infer(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.runner.infer({"input_ids": np.ascontiguousarray(ids, dtype=np.int64)})
        return np.asarray(out["memory"], dtype=np.float32).copy(), np.asarray(out["mask"]).astype(bool)

    def latency_ms(self, ids: np.ndarray, iterations: int) -> float:
        for _ in range(max(3, iterations // 10)):
            self.infer(ids)
        times = []
        for _ in range(iterations):
            start = time.perf_counter()
            self.infer(ids)
            times.append(time.perf_counter() - start)
        return float(np.median(times) * 1e3)


def parse_trtexec_outputs(text: str) -> dict[str, np.ndarray]:
    """trtexec ``--exportOutput`` JSON: ``[{"name", "dimensions": "2x16x256", "values": [...]}, ...]``."""
    result = {}
    for entry in json.loads(text):
        dims = [int(d) for d in str(entry.get("dimensions", "")).split("x") if d.strip()]
        values = np.asarray(entry["values"], dtype=np.float64)
        result[entry["name"]] = values.reshape(dims) if dims else values
    return result


def parse_trtexec_latency(text: str) -> float | None:
    """Median of trtexec's ``GPU Compute Time`` (ms), or None."""
    match = re.search(r"GPU Compute Time:.*?median = ([\d.]+) ms", text)
    return float(match.group(1)) if match else None


class TrtexecEngine:
    """Runs an engine through ``trtexec --loadInputs/--exportOutput`` (no Python TensorRT needed)."""

    def __init__(self, trtexec: str, engine_path: Path):
        self.trtexec, self.engine = trtexec, engine_path
        self.work = None

    def __enter__(self):
        self.work = tempfile.TemporaryDirectory()
        return self

    def __exit__(self, *exc):
        self.work.cleanup()

    def _base(self, ids: np.ndarray, inputs: Path) -> list[str]:
        np.ascontiguousarray(ids, dtype=np.int64).tofile(inputs)
        return [self.trtexec, f"--loadEngine={self.engine}", f"--shapes=input_ids:{shape_arg(ids.shape)}",
                f"--loadInputs=input_ids:{inputs}"]

    def infer(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        inputs, outputs = Path(self.work.name) / "input_ids.bin", Path(self.work.name) / "outputs.json"
        run_command([*self._base(ids, inputs), f"--exportOutput={outputs}", "--iterations=1", "--warmUp=0",
                     "--duration=0"], "trtexec inference")
        result = parse_trtexec_outputs(outputs.read_text(encoding="utf-8"))
        return result["memory"].astype(np.float32), result["mask"].astype(bool)

    def latency_ms(self, ids: np.ndarray, iterations: int) -> float | None:
        inputs = Path(self.work.name) / "latency_ids.bin"
        text = run_command([*self._base(ids, inputs), f"--iterations={iterations}", "--warmUp=200", "--duration=0"],
                           "trtexec timing")
        return parse_trtexec_latency(text)


# -- verification --------------------------------------------------------------------------------
def token_fidelity(candidate: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> dict:
    """Per-prompt mean token cosine over valid tokens (mask False): mean and worst prompt, max abs diff."""
    a, b = candidate.astype(np.float64), reference.astype(np.float64)
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
    valid = ~mask
    per_prompt = (cos * valid).sum(1) / np.maximum(valid.sum(1), 1)
    diff = np.abs(a - b)[valid]
    return {"mean_cosine": float(per_prompt.mean()), "worst_cosine": float(per_prompt.min()),
            "max_abs_diff": float(diff.max()) if diff.size else 0.0, "prompts": int(len(per_prompt))}


def verify_outputs(memory: np.ndarray, mask: np.ndarray, reference: dict, gate: dict) -> dict:
    ref_mask = reference["mask"].astype(bool)
    if memory.shape != reference["memory"].shape:
        return {"passed": False, "reason": f"memory shape {list(memory.shape)} != {list(reference['memory'].shape)}"}
    result = token_fidelity(memory, reference["memory"], ref_mask)
    result["mask_equal"] = bool(np.array_equal(mask.astype(bool), ref_mask))
    result["gate"] = dict(gate)
    result["passed"] = bool(result["mask_equal"] and result["mean_cosine"] >= gate["mean_cosine"]
                            and result["worst_cosine"] >= gate["worst_cosine"])
    if not result["passed"]:
        result["reason"] = "padding mask differs" if not result["mask_equal"] else "below the cosine gate"
    return result


def run_reference(engine, reference: dict, max_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """The engine's outputs for the reference ids, run in batches of at most ``max_batch``."""
    memories, masks = [], []
    for batch in chunks(reference["input_ids"], max_batch):
        memory, mask = engine.infer(batch)
        memories.append(memory)
        masks.append(mask)
    memory, mask = np.concatenate(memories), np.concatenate(masks)
    return memory, mask


def load_reference(bundle: Path, manifest: dict) -> dict:
    name = (manifest.get("reference") or {}).get("file")
    if not name:
        raise KitError("the bundle carries no reference outputs to verify the engine with")
    try:
        with np.load(bundle / name, allow_pickle=False) as data:
            return {k: data[k] for k in ("input_ids", "memory", "mask")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise KitError(f"{bundlecheck.printable(name)} is not a readable reference file ({exc})") from None


def batch_for_latency(ids: np.ndarray, batch: int) -> np.ndarray:
    reps = -(-batch // len(ids))
    return np.concatenate([ids] * reps)[:batch]


# -- the manifest after a successful build -------------------------------------------------------
def update_manifest(bundle: Path, manifest: dict, engine_name: str, stamps: dict) -> dict:
    """Name the engine as the bundle's model and hash it in; written atomically."""
    manifest = json.loads(json.dumps(manifest))
    engine_path = bundle / engine_name
    manifest["files"][engine_name] = {"sha256": sha256_file(engine_path), "bytes": engine_path.stat().st_size}
    manifest["files"] = dict(sorted(manifest["files"].items()))
    manifest["model"] = engine_name
    manifest.pop("model_data", None)  # the ONNX (and its weights file) stay, as the engine's source
    manifest["backend"] = "tensorrt"
    manifest["engine"] = {**manifest["engine"], "built": True, "file": engine_name}
    manifest["tensorrt"] = stamps
    tmp = bundle / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, bundle / "manifest.json")
    return manifest


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


# -- main ----------------------------------------------------------------------------------------
def parse_args(argv):
    parser = argparse.ArgumentParser(description="Build and verify this edgeseg bundle's TensorRT engine on the "
                                                 "device (numpy + TensorRT/polygraphy only).")
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent,
                        help="bundle folder (default: the folder holding this script)")
    parser.add_argument("--builder", choices=("auto", "polygraphy", "trtexec"), default="auto",
                        help="auto: polygraphy if importable, else trtexec")
    parser.add_argument("--trtexec", default=None, help="path of trtexec (default: JetPack's, then PATH)")
    parser.add_argument("--timing-cache", default=None,
                        help="timing cache file, read and updated (default: BUNDLE/timing.cache, not hashed)")
    parser.add_argument("--iterations", type=int, default=100, help="timed runs per latency figure")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and commands; build nothing")
    parser.add_argument("--skip-verify", action="store_true", help="build only (the manifest is not updated)")
    parser.add_argument("--skip-lint", action="store_true",
                        help="build without checking the ONNX against TensorRT's ONNX support matrix")
    parser.add_argument("--no-manifest-update", action="store_true", help="leave manifest.json unchanged")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return _main(args)
    except KitError as exc:
        print(f"build_engine: error: {exc}", file=sys.stderr)
        return 2


def _main(args) -> int:
    bundle = args.bundle.resolve()
    manifest = read_manifest(bundle)
    plan = engine_plan(manifest)
    onnx_path = bundle / plan["onnx"]
    engine_path = bundle / plan.get("file", ENGINE_FILE)
    timing_cache = args.timing_cache or str(bundle / "timing.cache")
    trt = import_tensorrt()
    polygraphy = polygraphy_available()
    trtexec = find_trtexec(args.trtexec)
    print(f"bundle     {bundle} ({manifest['encoder']}, {plan['precision']}, context {plan['context_length']})")
    print("profile    " + ", ".join(f"{n} min {shape_arg(s['min'])} opt {shape_arg(s['opt'])} max "
                                     f"{shape_arg(s['max'])}" for n, s in plan["profile"].items()))
    print(f"l4t        {l4t_release() or 'not a Jetson'}")
    print(f"tensorrt   python: {getattr(trt, '__version__', 'not importable')}; polygraphy: "
          f"{'yes' if polygraphy else 'no'}; trtexec: {trtexec or 'not found'}")
    if args.dry_run:
        run_lint(bundle, manifest, plan, getattr(trt, "__version__", None), args.skip_lint)
        if trtexec or not (polygraphy and trt):
            print("trtexec    " + " ".join(trtexec_build_command(trtexec or "trtexec", onnx_path, engine_path, plan,
                                                                   timing_cache)))
        else:
            print("builder    polygraphy network_from_onnx_path(strongly_typed=True) -> CreateConfig -> "
                  "engine_from_network -> save_engine")
        return 0
    builder = choose_builder(args.builder, polygraphy, trt, trtexec)
    version = getattr(trt, "__version__", None) if builder == "polygraphy" else None
    if builder == "trtexec":
        probe = subprocess.run([trtexec, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        version = trtexec_version(probe.stdout) or getattr(trt, "__version__", None)
    if version is not None and tensorrt_version_tuple(version) < MIN_TENSORRT:
        raise KitError(f"TensorRT {version} is too old: strongly typed networks with int64 ids need TensorRT 10+ "
                       "(JetPack 6.1 or newer)")
    lint = run_lint(bundle, manifest, plan, version, args.skip_lint)
    gpu = gpu_info()
    if gpu is None:
        raise KitError("no CUDA GPU found (libcuda could not see a device)")
    print(f"gpu        {gpu['name']} (sm {gpu['compute_capability']}, CUDA driver API {gpu['cuda_driver_api']})")
    build_s = _build(builder, trt, trtexec, onnx_path, engine_path, plan, timing_cache)
    if args.skip_verify:
        print("verify     skipped (--skip-verify); the manifest is not updated")
        return 0
    stamps = {"version": version, "builder": builder, "kit_version": KIT_VERSION, "gpu": gpu, "l4t": l4t_release(),
              "built": now(), "build_seconds": round(build_s, 1), "lint": lint}
    return _verify(args, bundle, manifest, plan, builder, trt, trtexec, engine_path, stamps)


def _build(builder: str, trt, trtexec, onnx_path: Path, engine_path: Path, plan: dict, timing_cache: str) -> float:
    """Build the engine into a temporary sibling, then rename it into place; returns the seconds it took."""
    tmp_engine = engine_path.with_name("." + engine_path.name + ".tmp")
    start = time.perf_counter()
    if builder == "polygraphy":
        build_polygraphy(trt, onnx_path, tmp_engine, plan, timing_cache)
    else:
        run_command(trtexec_build_command(trtexec, onnx_path, tmp_engine, plan, timing_cache), "trtexec build")
    os.replace(tmp_engine, engine_path)
    build_s = time.perf_counter() - start
    size_mb = engine_path.stat().st_size / 1e6
    print(f"built      {engine_path.name} ({size_mb:.1f} MB) with {builder} in {build_s:.0f} s")
    return build_s


def _verify(args, bundle: Path, manifest: dict, plan: dict, builder: str, trt, trtexec, engine_path: Path,
            stamps: dict) -> int:
    """Run the reference prompts through the engine, gate them, time it; on PASS name it the bundle's model."""
    reference = load_reference(bundle, manifest)
    version_compatible = bool(plan.get("builder_options", {}).get("version_compatible"))
    runner = PolygraphyEngine(trt, engine_path, version_compatible) if builder == "polygraphy" else \
        TrtexecEngine(trtexec, engine_path)
    with runner as engine:
        memory, mask = run_reference(engine, reference, plan["max_batch"])
        result = verify_outputs(memory, mask, reference, plan["gate"])
        latency = {}
        for batch in sorted({1, plan["max_batch"]}):
            value = engine.latency_ms(batch_for_latency(reference["input_ids"], batch), args.iterations)
            latency[f"batch_{batch}"] = value
    verdict = "PASS" if result["passed"] else "FAIL"
    print(f"verify     {verdict}: mean cosine {result.get('mean_cosine', float('nan')):.5f}, worst "
          f"{result.get('worst_cosine', float('nan')):.5f} (gate {plan['gate']['mean_cosine']} / "
          f"{plan['gate']['worst_cosine']}), mask {'equal' if result.get('mask_equal') else 'DIFFERS'}, "
          f"{len(reference['input_ids'])} reference prompts vs FP32")
    print("latency    " + ", ".join(f"{k.replace('_', ' ')}: " + (f"{v:.2f} ms" if v is not None else "n/a")
                                    for k, v in latency.items()) + f" (median of {args.iterations})")
    if not result["passed"]:
        print(f"build_engine: verification failed ({result.get('reason')}); {engine_path.name} is left for "
              "inspection and the manifest is unchanged", file=sys.stderr)
        return 1
    if not args.no_manifest_update:
        stamps = {**stamps, "verification": {**result, "vs": "reference.npz (FP32)"}, "latency_ms": latency}
        update_manifest(bundle, manifest, engine_path.name, stamps)
        print(f"manifest   {engine_path.name} is now the bundle's model (backend tensorrt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
