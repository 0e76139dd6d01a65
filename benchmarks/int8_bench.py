#!/usr/bin/env python
"""INT8 benchmark (issue 4): size, latency, memory and fidelity of the S0 INT8 bundles vs the SAM3 teacher.

One run measures, side by side:

1. bundles: FP32 ONNX bundles of ``mobileclip-s0`` and ``sam3`` (``edgeseg export``), INT8 static Q/DQ
   (minmax, calibration split) and INT8 dynamic of S0 (``edgeseg quantize``), optionally INT8 of the
   teacher; reused from ``--work`` when their manifests match what this script would build;
2. size of every bundle (all files) against the FP32 SAM3 text encoder (state dict bytes);
3. latency at batch 1 and 8 on ONNX Runtime CPU (and the torch FP32 teacher), interleaved rounds;
4. peak RSS of fresh processes that load a bundle (or build the torch teacher) and encode 100 prompts;
5. fidelity INT8 vs FP32 (each manifest's gate figures, and recomputed on eval prompts);
6. ``results.json`` + ``report.md`` (+ ``summary.png`` when matplotlib is installed) in ``--out``.

ALL FIGURES COME FROM RANDOM/SYNTHETIC WEIGHTS (seed 0): no real checkpoint is used. Sizes and
latencies do not depend on the weight values; fidelity figures and the number of layers the
quantizer keeps in float do, so they say nothing about real checkpoints.

Run from the repository root::

    .venv/bin/python benchmarks/int8_bench.py            # full run (~10 min once bundles exist)
    .venv/bin/python benchmarks/int8_bench.py --quick    # smaller run (~3 min once bundles exist)
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Measurement code shared with `edgeseg bench` (edgeseg/bench/): environment, CPU load, latency rounds,
# percentiles, tokenizer timing, peak RSS of fresh processes, markdown tables.
from edgeseg.bench.env import CpuMeter, background_load, environment, version, wait_for_idle
from edgeseg.bench.latency import Candidate, add_ratios, interleaved_latency
from edgeseg.bench.latency import tokenizer_timing as _tokenizer_timing
from edgeseg.bench.memory import RUNTIME_CHILD, run_measured, torch_child
from edgeseg.bench.report import md_table
from edgeseg.runtime.base import DEFAULT_BATCH

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_NOTE = "random/synthetic weights (seed 0): no real checkpoint; fidelity and float-layer counts are not " \
               "representative of trained models"
MB = 1_000_000  # decimal megabytes everywhere in this report

# Bars of issue 4.
BAR_SIZE_MB = 45.0
BAR_SIZE_RATIO = 31.0
PRUNED_SIZE_MB = 28.0  # issue 4: "with vocabulary pruning, report how far below 28 MB (>= 50x) it gets"
PRUNED_RATIO = 50.0
BAR_SPEEDUP_TORCH = 150.0
BAR_SPEEDUP_ORT = 80.0
BAR_RSS_MB = 150.0
GATE_MEAN = 0.999
GATE_WORST = 0.99

# The batch-1 prompt (and first prompt of batch 8): a short attribute phrase, SAM3's typical input.
PROMPT = "a player in white"
BATCH8_EXTRA = ["red car", "dog", "person holding an umbrella", "traffic light", "a cat on a sofa",
                "yellow school bus", "the left zebra"]


def say(message: str) -> None:
    print(f"[int8-bench {time.strftime('%H:%M:%S')}] {message}", flush=True)



def tokenizer_timing(prompts: list[str]) -> dict[str, Any]:
    return _tokenizer_timing(prompts, PROMPT, (16, 32))


def latency_phase(candidates: list[Candidate], args: argparse.Namespace) -> dict[str, Any]:
    say(f"latency: warm-up ({args.warmup} calls per candidate and batch), then {args.rounds} interleaved rounds")

    def progress(done: int, total: int) -> None:
        if done == 1 or done % 5 == 0 or done == total:
            say(f"latency: round {done}/{total}")

    result = interleaved_latency(candidates, args.batch_sizes, args.rounds, warmup=args.warmup,
                                 target_s=args.target_s, max_calls=args.max_calls, gap_ms=args.gap_ms,
                                 block_warmup=args.block_warmup, progress=progress)
    add_ratios(result["batches"], "sam3-torch-fp32", "speedup_vs_torch_fp32_teacher")
    add_ratios(result["batches"], "sam3-fp32", "speedup_vs_ort_fp32_teacher")
    result["method"] = ("ORT: Runner.infer, torch: model(ids) under inference_mode; " + result["method"]
                        + "; speed-ups are ratios of p50s at the same batch")
    return {**result, "threads": args.threads,
            "batch_prompts": {"1": [PROMPT], "8": [PROMPT, *BATCH8_EXTRA]}}


# -- bundles --------------------------------------------------------------------------------------
def edgeseg_command() -> list[str]:
    script = Path(sys.executable).parent / "edgeseg"
    return [str(script)] if script.exists() else [sys.executable, "-m", "edgeseg.cli"]


@dataclass
class BundleSpec:
    key: str
    label: str
    encoder: str
    precision: str
    args: list[str]  # edgeseg arguments, with {out} and {src} placeholders
    source: str | None = None  # key of the FP32 bundle an INT8 one is made from
    expect: dict[str, Any] = field(default_factory=dict)  # dotted manifest path -> value
    role: str = "shipped"  # shipped | informational
    optional: bool = False

    def command(self, work: Path) -> list[str]:
        src = str(work / self.source) if self.source else ""
        return [a.format(out=str(work / self.key), src=src) for a in self.args]


def bundle_specs(args: argparse.Namespace) -> list[BundleSpec]:
    threads = str(args.threads)
    gate = ["--min-mean-cosine", str(GATE_MEAN), "--min-worst-cosine", str(GATE_WORST)]
    gate_expect = {"fidelity.gate.mean_cosine": GATE_MEAN, "fidelity.gate.worst_cosine": GATE_WORST}
    specs = [
        BundleSpec("s0-fp32", "S0 FP32 (ORT)", "mobileclip-s0", "fp32",
                   ["export", "--encoder", "mobileclip-s0", "--seed", "0", "--out", "{out}"],
                   expect={"source.checkpoint_sha256": "random", "source.seed": 0}),
        BundleSpec("sam3-fp32", "SAM3 teacher FP32 (ORT)", "sam3", "fp32",
                   ["export", "--encoder", "sam3", "--seed", "0", "--out", "{out}"],
                   expect={"source.checkpoint_sha256": "random", "source.seed": 0}),
        BundleSpec("s0-int8-static", "S0 INT8 static Q/DQ (ORT)", "mobileclip-s0", "int8",
                   ["quantize", "{src}", "--out", "{out}", "--mode", "static", "--method", "minmax",
                    "--eval-limit", "1000", *gate, "--threads", threads], source="s0-fp32",
                   expect={"quantization.mode": "static", "calibration.method": "minmax",
                           "calibration.name": "edgeseg/data/prompts/calibration.txt", "calibration.count": 2000,
                           "fidelity.prompts": 1000, **gate_expect}),
        BundleSpec("s0-int8-dynamic", "S0 INT8 dynamic (ORT)", "mobileclip-s0", "int8",
                   ["quantize", "{src}", "--out", "{out}", "--mode", "dynamic", "--eval-limit", "1000", *gate,
                    "--threads", threads], source="s0-fp32",
                   expect={"quantization.mode": "dynamic", "fidelity.prompts": 1000, **gate_expect}),
        BundleSpec("s0-int8-static-pruned", "S0 INT8 static Q/DQ, pruned vocabulary (ORT)", "mobileclip-s0", "int8",
                   ["quantize", "{src}", "--out", "{out}", "--mode", "static", "--method", "minmax",
                    "--eval-limit", "1000", *gate, "--prune-vocab", "train", "--threads", threads], source="s0-fp32",
                   expect={"quantization.mode": "static", "calibration.count": 2000,
                           "tokenizer.pruned.corpus": "edgeseg/data/prompts train splits (calibration + distill)",
                           **gate_expect}),
    ]
    if not args.skip_all_int8:
        relaxed = ["--min-mean-cosine", "0.998", "--min-worst-cosine", "0.99"]
        specs.append(BundleSpec(
            "s0-int8-static-allint8", "S0 INT8 static Q/DQ, gate relaxed (info)", "mobileclip-s0", "int8",
            ["quantize", "{src}", "--out", "{out}", "--mode", "static", "--method", "minmax", "--eval-limit",
             "1000", *relaxed, "--threads", threads], source="s0-fp32", role="informational",
            expect={"quantization.mode": "static", "calibration.count": 2000, "fidelity.prompts": 1000,
                    "fidelity.gate.mean_cosine": 0.998, "fidelity.gate.worst_cosine": 0.99}))
    if not args.skip_teacher_int8:
        specs.append(BundleSpec(
            "sam3-int8-dynamic", "SAM3 teacher INT8 dynamic (ORT)", "sam3", "int8",
            ["quantize", "{src}", "--out", "{out}", "--mode", "dynamic", "--eval-limit", "200", *gate,
             "--threads", threads], source="sam3-fp32", optional=True,
            expect={"quantization.mode": "dynamic", "fidelity.prompts": 200, **gate_expect}))
        if args.teacher_static:
            specs.append(BundleSpec(
                "sam3-int8-static", "SAM3 teacher INT8 static Q/DQ (ORT)", "sam3", "int8",
                ["quantize", "{src}", "--out", "{out}", "--mode", "static", "--method", "minmax",
                 "--calibration-limit", "128", "--eval-limit", "200", *gate, "--threads", threads],
                source="sam3-fp32", optional=True,
                expect={"quantization.mode": "static", "calibration.count": 128, "fidelity.prompts": 200,
                        **gate_expect}))
    return specs


# The edgeseg sources that decide what a bundle holds; a bundle built from other versions is rebuilt.
EXPORT_SOURCES = ("edgeseg/export.py", "edgeseg/bundle.py", "edgeseg/tokenizer.py",
                  "edgeseg/checkpoints.py", "edgeseg/encoders/*.py", "edgeseg/encoders/configs/*.json")
QUANTIZE_SOURCES = ("edgeseg/quantize.py", "edgeseg/bundle.py", "edgeseg/outputs.py",
                    "edgeseg/tokenizer.py", "edgeseg/corpus.py", "edgeseg/data/prompts/calibration.txt",
                    "edgeseg/data/prompts/eval.txt")


def source_fingerprint(spec: BundleSpec) -> str:
    import hashlib

    import edgeseg

    package_root = Path(edgeseg.__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for pattern in EXPORT_SOURCES if spec.precision == "fp32" else QUANTIZE_SOURCES:
        for path in sorted(package_root.glob(pattern)) or sorted(ROOT.glob(pattern)):
            digest.update(path.relative_to(path.parents[len(Path(pattern).parts) - 1]).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def fingerprint_file(work: Path, spec: BundleSpec) -> Path:
    return work / f"{spec.key}.source.json"


def dotted(data: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        if not isinstance(data, dict) or part not in data:
            return KeyError
        data = data[part]
    return data


def manifest_mismatch(spec: BundleSpec, work: Path, check_sources: bool = True) -> str | None:
    """None when the bundle in ``work`` is what ``spec`` would build; else why it is not."""
    from edgeseg import __version__
    from edgeseg.bundle import verify_bundle
    from edgeseg.errors import EdgesegError

    path = work / spec.key
    if not (path / "manifest.json").is_file():
        return "absent"
    try:
        manifest = verify_bundle(path)
    except EdgesegError as exc:
        return f"invalid: {exc}"
    checks = {"encoder": spec.encoder, "precision": spec.precision, "backend": "onnxruntime", **spec.expect}
    for key, want in checks.items():
        got = dotted(manifest, key)
        if got != want:
            return f"manifest {key} is {got!r}, want {want!r}"
    tools = manifest.get("tools", {})
    for name, want in (("edgeseg", __version__), ("onnxruntime", version("onnxruntime"))):
        if tools.get(name) != want:
            return f"built with {name} {tools.get(name)}, installed {want}"
    if spec.source:
        src = json.loads((work / spec.source / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("source_bundle", {}).get("model_sha256") != src["files"][src["model"]]["sha256"]:
            return f"made from another {spec.source} model"
    if check_sources:
        recorded = fingerprint_file(work, spec)
        if not recorded.is_file():
            return "no record of the edgeseg sources it was built with"
        if json.loads(recorded.read_text(encoding="utf-8")).get("sha256") != source_fingerprint(spec):
            return "edgeseg's export/quantize sources changed since it was built"
    return None


def build_bundles(specs: list[BundleSpec], work: Path, rebuild: bool, check_sources: bool) -> dict[str, dict[str, Any]]:
    work.mkdir(parents=True, exist_ok=True)
    built: dict[str, dict[str, Any]] = {}
    for spec in specs:
        if spec.source and built.get(spec.source, {}).get("status") not in ("built", "reused"):
            built[spec.key] = {"status": "skipped", "reason": f"{spec.source} is not available"}
            continue
        command = edgeseg_command() + spec.command(work)
        if spec.source and built[spec.source]["status"] == "built":
            reason: str | None = f"{spec.source} was rebuilt"
        else:
            reason = "--rebuild" if rebuild else manifest_mismatch(spec, work, check_sources)
        entry: dict[str, Any] = {"command": "edgeseg " + shlex.join(spec.command(work))}
        if reason is None and not check_sources:
            stale = manifest_mismatch(spec, work, True)
            if stale:
                entry["stale"] = f"reused under --reuse-any: {stale}"
                say(f"bundle {spec.key}: WARNING {entry['stale']}")
        record = fingerprint_file(work, spec)
        if reason is None and record.is_file():
            entry["built_record"] = json.loads(record.read_text(encoding="utf-8"))
        if reason is None:
            say(f"bundle {spec.key}: reusing {work / spec.key}")
            entry.update(status="reused", build_s=None)
        else:
            say(f"bundle {spec.key}: building ({reason}): {entry['command']}")
            if (work / spec.key).exists():
                shutil.rmtree(work / spec.key)
            fingerprint_file(work, spec).unlink(missing_ok=True)
            fingerprint = source_fingerprint(spec)  # before the build: the sources it runs with
            start = time.perf_counter()
            log_path = work / f"{spec.key}.build.log"
            with open(log_path, "w", encoding="utf-8") as log:
                rc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
            seconds = time.perf_counter() - start
            tail = [line for line in log_path.read_text(encoding="utf-8").splitlines()
                    if "WARNING" not in line][-3:]
            for line in tail:
                say(f"  {line}")
            if rc != 0:
                entry.update(status="failed", build_s=seconds, returncode=rc, log_tail=tail)
                say(f"bundle {spec.key}: FAILED (exit {rc}) after {seconds:.0f} s; see {log_path}")
                if not spec.optional:
                    raise SystemExit(f"building {spec.key} failed; see {log_path}")
                built[spec.key] = entry
                continue
            entry.update(status="built", build_s=seconds)
            record = {"sha256": fingerprint, "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      "command": entry["command"]}
            fingerprint_file(work, spec).write_text(json.dumps(record) + "\n", encoding="utf-8")
            say(f"bundle {spec.key}: built in {seconds:.0f} s")
        built[spec.key] = entry
    return built


def bundle_facts(spec: BundleSpec, path: Path) -> dict[str, Any]:
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    files = {p.relative_to(path).as_posix(): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}
    facts = {
        "key": spec.key, "label": spec.label, "role": spec.role, "path": str(path), "encoder": manifest["encoder"],
        "context_length": manifest["context_length"], "precision": manifest["precision"],
        "created": manifest.get("created"), "bytes_total": sum(files.values()),
        "bytes_model": files[manifest["model"]] + files.get(manifest.get("model_data") or "", 0),
        "files_bytes": files, "source": manifest.get("source"), "weights": WEIGHTS_NOTE,
    }
    if manifest["precision"] == "int8":
        quant = manifest.get("quantization", {})
        facts.update({
            "quantization": quant, "calibration": manifest.get("calibration"),
            "fidelity_manifest": manifest.get("fidelity"),
            "excluded_layers": manifest.get("excluded_layers", []),
            "excluded_layers_count": len(manifest.get("excluded_layers", [])),
            "quantized_layers": quant.get("quantized_layers"), "layers": quant.get("layers"),
        })
    return facts


IMPORT_CHILD = r"""
import json, resource, sys
import edgeseg.runtime, onnxruntime
print(json.dumps({"torch_imported": "torch" in sys.modules, "modules": len(sys.modules),
                  "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""

STAGES_CHILD = r"""
import json, sys
def vm():
    found = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                found[key + "_kb"] = int(value.split()[0])
    return found
stages = {"python started": vm()}
import onnxruntime, edgeseg.runtime
stages["imported edgeseg.runtime + onnxruntime"] = vm()
from edgeseg.runtime import load
bundle, prompts_file, threads, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
prompts = [l for l in open(prompts_file, encoding="utf-8").read().splitlines() if l.strip()]
runner = load(bundle, threads=threads)
stages["bundle verified + ORT session created"] = vm()
runner.tokenizer
stages["tokenizer constructed"] = vm()
runner.encode(prompts[:1], batch_size=1)
stages["encoded 1 prompt"] = vm()
runner.encode(prompts, batch_size=batch)
stages["encoded 100 prompts"] = vm()
print(json.dumps({"stages": stages, "torch_imported": "torch" in sys.modules}))
"""

CLI_CHECK_CHILD = r"""
import json, sys
from edgeseg.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"returncode": rc, "torch_imported": "torch" in sys.modules, "onnx_imported": "onnx" in sys.modules}))
"""

def memory_phase(args: argparse.Namespace, work: Path, available: dict[str, Path], prompts_file: Path,
                 quick: bool) -> dict[str, Any]:
    python = sys.executable
    batch, threads = str(args.rss_batch), str(args.threads)
    runs: list[tuple[str, str, list[str]]] = [
        ("import-only", "python: import edgeseg.runtime + onnxruntime (no model)", [python, "-c", IMPORT_CHILD]),
    ]
    for key in ("s0-int8-static", "s0-int8-dynamic", "s0-int8-static-allint8", "s0-int8-static-pruned", "s0-fp32"):
        if key in available:
            runs.append((f"{key}/runtime", f"python: edgeseg.runtime.load({key}).encode(100 prompts)",
                         [python, "-c", RUNTIME_CHILD, str(available[key]), str(prompts_file), threads, batch]))
    if "s0-int8-static" in available:
        runs.append(("s0-int8-static/runtime-batch1", "as s0-int8-static/runtime, one prompt per call (batch 1)",
                     [python, "-c", RUNTIME_CHILD, str(available["s0-int8-static"]), str(prompts_file), threads, "1"]))
    for key in ("s0-int8-static", "s0-int8-dynamic"):
        if key in available:
            out = work / f"rss-{key}.npz"
            runs.append((f"{key}/cli", f"edgeseg encode --bundle {key} (console script)",
                         [*edgeseg_command(), "encode", "--bundle", str(available[key]), "--prompts",
                          str(prompts_file), "--out", str(out), "--batch-size", batch, "--threads", threads]))
    if not quick:
        runs.append(("sam3-torch-fp32", "python: torch build_encoder('sam3') + encode_prompts(100 prompts)",
                     torch_child("sam3", None, prompts_file, args.threads, args.rss_batch)))
    if args.teacher_memory:
        for key in ("sam3-fp32", "sam3-int8-dynamic", "sam3-int8-static"):
            if key in available:
                runs.append((f"{key}/runtime", f"python: edgeseg.runtime.load({key}).encode(100 prompts)",
                             [python, "-c", RUNTIME_CHILD, str(available[key]), str(prompts_file), threads, batch]))
    results: dict[str, Any] = {}
    for name, what, command in runs:
        say(f"memory: {name} ...")
        result = run_measured(command)
        result["what"] = what
        results[name] = result
        rss = result["peak_rss_mb"]
        say(f"memory: {name}: peak RSS {rss:.1f} MB, {result['wall_s']:.1f} s, exit {result['returncode']}"
            if rss else f"memory: {name}: exit {result['returncode']} (no RSS)")
        for stale in work.glob("rss-*.npz"):
            stale.unlink()
    checks = {}
    for key in ("s0-int8-static", "s0-int8-dynamic"):
        if key in available:
            out = work / f"torch-check-{key}.npz"
            command = [python, "-c", CLI_CHECK_CHILD, "encode", "--bundle", str(available[key]), "--prompts",
                       str(prompts_file), "--out", str(out), "--batch-size", batch, "--threads", threads]
            proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith("{")), "{}")
            checks[f"{key}/cli"] = {**json.loads(line), "how": "python -c 'from edgeseg.cli import main; "
                                    "main([\"encode\", \"--bundle\", ...])' then 'torch' in sys.modules"}
            if out.exists():
                out.unlink()
    stages = {}
    if Path("/proc/self/status").exists():
        for key in ("s0-int8-static", "s0-int8-dynamic"):
            if key in available:
                proc = subprocess.run([python, "-c", STAGES_CHILD, str(available[key]), str(prompts_file), threads,
                                       batch], capture_output=True, text=True, cwd=ROOT)
                line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith("{")), None)
                if line:
                    stages[key] = json.loads(line)["stages"]
    return {
        "stages": stages,
        "stages_method": "a fresh process reads VmRSS/VmHWM from /proc/self/status after each step (kB)",
        "method": "peak resident set size (VmHWM) of a fresh process, kB from the kernel, shown in decimal MB "
                  "(kB*1024/1e6); the process encodes the same 100 eval prompts with batch size "
                  f"{args.rss_batch} and {args.threads} threads",
        "prompts": 100, "batch_size": args.rss_batch, "runs": results, "cli_torch_check": checks,
    }


# -- in-process candidates ------------------------------------------------------------------------
def make_candidates(args: argparse.Namespace, available: dict[str, Path], specs: dict[str, BundleSpec],
                    runners: dict[str, Any], torch_model: Any) -> list[Candidate]:
    import torch

    from edgeseg.tokenizer import get_tokenizer

    prompts = {1: [PROMPT], 8: [PROMPT, *BATCH8_EXTRA]}
    batches = args.batch_sizes
    candidates = []
    if torch_model is not None:
        tensors = {b: torch.from_numpy(get_tokenizer()(prompts[b], torch_model.context_length).ids) for b in batches}

        def torch_call(t: torch.Tensor) -> Callable[[], Any]:
            def call() -> Any:
                with torch.inference_mode():
                    return torch_model(t)
            return call

        candidates.append(Candidate("sam3-torch-fp32", "SAM3 teacher FP32 (torch)", torch_model.context_length,
                                    {b: torch_call(tensors[b]) for b in batches}, "teacher"))
    order = ["sam3-fp32", "sam3-int8-dynamic", "sam3-int8-static", "s0-fp32", "s0-int8-static", "s0-int8-dynamic",
             "s0-int8-static-allint8", "s0-int8-static-pruned"]
    for key in order:
        if key not in runners:
            continue
        runner = runners[key]
        ids = {b: runner.tokenizer(prompts[b], runner.context_length).ids for b in batches}
        reference = get_tokenizer()(prompts[1], runner.context_length).ids
        if not same_tokens(runner.tokenizer, ids[1], get_tokenizer(), reference).all():
            raise SystemExit(f"{key}: the bundle's tokenizer disagrees with edgeseg's")
        candidates.append(Candidate(
            key, specs[key].label, runner.context_length,
            {b: (lambda r=runner, x=ids[b]: r.infer(x)) for b in batches},
            "teacher" if key.startswith("sam3") else "s0"))
    return candidates


def same_tokens(tok_a: Any, ids_a: np.ndarray, tok_b: Any, ids_b: np.ndarray) -> np.ndarray:
    """Per row: do two tokenizers (e.g. full and pruned vocabularies) give the same token strings?"""
    dec_a, dec_b = tok_a.decoder, tok_b.decoder
    return np.array([[dec_a[int(i)] for i in a if i] == [dec_b[int(i)] for i in b if i] for a, b in zip(ids_a, ids_b)],
                    dtype=bool)


def fidelity_phase(runners: dict[str, Any], pairs: list[tuple[str, str]], prompts: dict[str, list[str]],
                   available: dict[str, Path]) -> dict[str, Any]:
    from edgeseg.bundle import read_manifest
    from edgeseg.outputs import token_fidelity

    cache: dict[tuple[str, int], Any] = {}

    def encode(key: str, count: int) -> Any:
        if (key, count) not in cache:
            cache[(key, count)] = runners[key].encode(prompts[key][:count], batch_size=64)
        return cache[(key, count)]

    rows = {}
    for int8_key, fp32_key in pairs:
        if int8_key not in runners or fp32_key not in runners:
            continue
        count = len(prompts[int8_key])
        say(f"fidelity: {int8_key} vs {fp32_key} on {count} eval prompts")
        t0 = time.perf_counter()
        ref, got = encode(fp32_key, count), encode(int8_key, count)
        # a pruned vocabulary segments words outside its corpus differently: compare the rest
        same = same_tokens(runners[int8_key].tokenizer, got.input_ids, runners[fp32_key].tokenizer, ref.input_ids)
        masks_equal = bool(np.array_equal(ref.mask[same], got.mask[same]))
        recomputed = token_fidelity(got.memory[same], ref.memory[same], ref.mask[same])
        recomputed["resegmented_prompts"] = int((~same).sum())
        manifest = read_manifest(available[int8_key])
        rows[int8_key] = {
            "vs": fp32_key, "manifest": manifest.get("fidelity"),
            "recomputed": {**recomputed, "masks_equal": masks_equal},
            "self_check_vs_torch_reference": runners[int8_key].self_check(),
            "excluded_layers_count": len(manifest.get("excluded_layers", [])), "seconds": time.perf_counter() - t0,
        }
        fid = rows[int8_key]["recomputed"]
        say(f"fidelity: {int8_key}: mean cosine {fid['mean_cosine']:.5f}, worst {fid['worst_cosine']:.5f} "
            f"(manifest {manifest['fidelity']['mean_cosine']:.5f} / {manifest['fidelity']['worst_cosine']:.5f})")
    fp32_checks = {k: runners[k].self_check() for k in ("s0-fp32", "sam3-fp32") if k in runners}
    return {
        "method": "INT8 bundle vs its FP32 bundle, both on ONNX Runtime CPU, on evenly spaced prompts of the held-out "
                  "eval split, offset by half a step from the ones quantize's gate used; "
                  "edgeseg.outputs.token_fidelity (per prompt: mean over valid tokens of the token cosine; mean "
                  "over prompts and worst prompt). 'manifest' = the figures quantize wrote (its gate "
                  "run); self_check = bundle vs the torch FP32 reference outputs stored in the bundle (48 prompts)",
        "gate": {"mean_cosine": GATE_MEAN, "worst_cosine": GATE_WORST},
        "rows": rows, "fp32_self_checks": fp32_checks, "weights": WEIGHTS_NOTE,
    }


# -- bars and report ------------------------------------------------------------------------------
def make_bars(results: dict[str, Any]) -> list[dict[str, Any]]:
    bars: list[dict[str, Any]] = []

    def bar(name: str, target: str, measured: float | None, fmt: str, passed: bool | None, note: str = "",
            informational: bool = False) -> None:
        bars.append({"bar": name, "target": target, "measured": measured,
                     "measured_text": "n/a" if measured is None else fmt.format(measured),
                     "passed": passed, "note": note, "informational": informational})

    bundles, sizes = results["bundles"], results["sizes"]
    teacher_bytes = sizes["sam3_fp32_state_dict_bytes"]
    for key in ("s0-int8-static", "s0-int8-dynamic"):
        if key in bundles:
            total = bundles[key]["bytes_total"]
            excl = bundles[key]["excluded_layers_count"]
            bar(f"{key} bundle size", f"<= {BAR_SIZE_MB:g} MB", total / MB, "{:.2f} MB", total / MB <= BAR_SIZE_MB,
                f"{excl} of {bundles[key]['layers']} layers kept in float by the gate")
            bar(f"SAM3 FP32 / {key} bundle", f">= {BAR_SIZE_RATIO:g}x", teacher_bytes / total, "{:.1f}x",
                teacher_bytes / total >= BAR_SIZE_RATIO)
    if "s0-int8-static-pruned" in bundles:
        total = bundles["s0-int8-static-pruned"]["bytes_total"]
        bar("s0-int8-static-pruned bundle size (vocabulary pruning)", f"<= {PRUNED_SIZE_MB:g} MB", total / MB,
            "{:.2f} MB", total / MB <= PRUNED_SIZE_MB, "report how far below 28 MB it gets")
        bar("SAM3 FP32 / s0-int8-static-pruned bundle", f">= {PRUNED_RATIO:g}x", teacher_bytes / total, "{:.1f}x",
            teacher_bytes / total >= PRUNED_RATIO)
    info_key = "s0-int8-static-allint8"
    if info_key in bundles:
        total = bundles[info_key]["bytes_total"]
        bar(f"(info) {info_key} bundle size", f"<= {BAR_SIZE_MB:g} MB", total / MB, "{:.2f} MB",
            total / MB <= BAR_SIZE_MB, "every layer INT8; gate relaxed to mean >= 0.998", informational=True)
        bar(f"(info) SAM3 FP32 / {info_key} bundle", f">= {BAR_SIZE_RATIO:g}x", teacher_bytes / total, "{:.1f}x",
            teacher_bytes / total >= BAR_SIZE_RATIO, informational=True)
    lat = results.get("latency", {}).get("batches", {}).get("1", {})
    shipped = [k for k in ("s0-int8-static", "s0-int8-dynamic") if k in lat]
    if shipped:
        best = min(shipped, key=lambda k: lat[k]["p50_ms"])
        for ref, field_name, target in (("sam3-torch-fp32", "speedup_vs_torch_fp32_teacher", BAR_SPEEDUP_TORCH),
                                        ("sam3-fp32", "speedup_vs_ort_fp32_teacher", BAR_SPEEDUP_ORT)):
            if ref not in lat:
                continue
            value = lat[best][field_name]
            estimates = results.get("gemm", {}).get("estimates", {})
            teacher_backend = "torch-fp32" if ref == "sam3-torch-fp32" else "ort-fp32"
            estimate = estimates.get(f"ort-{best.removeprefix('s0-')} vs {teacher_backend}")
            bar(f"best S0 INT8 ({best}) p50 speed-up vs {ref}, batch 1", f">= {target:g}x", value, "{:.1f}x",
                value >= target, f"p50 {lat[best]['p50_ms']:.2f} ms vs {lat[ref]['p50_ms']:.1f} ms"
                + (f"; this CPU's GEMM rates estimate {estimate['ratio']:.0f}x (see Latency)" if estimate else ""))
            if best != "s0-int8-static" and "s0-int8-static" in lat:
                value = lat["s0-int8-static"][field_name]
                bar(f"static Q/DQ (s0-int8-static) p50 speed-up vs {ref}, batch 1", f">= {target:g}x", value,
                    "{:.1f}x", value >= target, f"p50 {lat['s0-int8-static']['p50_ms']:.2f} ms")
    if info_key in lat and "sam3-torch-fp32" in lat:
        value = lat[info_key]["speedup_vs_torch_fp32_teacher"]
        bar(f"(info) {info_key} p50 speed-up vs sam3-torch-fp32, batch 1", f">= {BAR_SPEEDUP_TORCH:g}x", value,
            "{:.1f}x", value >= BAR_SPEEDUP_TORCH, informational=True)
    runs = results.get("memory", {}).get("runs", {})
    if f"{info_key}/runtime" in runs and runs[f"{info_key}/runtime"]["peak_rss_mb"] is not None:
        value = runs[f"{info_key}/runtime"]["peak_rss_mb"]
        bar(f"(info) peak RSS, {info_key}/runtime, 100 prompts", f"<= {BAR_RSS_MB:g} MB", value, "{:.1f} MB",
            value <= BAR_RSS_MB, informational=True)
    for key in ("s0-int8-static/runtime", "s0-int8-dynamic/runtime", "s0-int8-static-pruned/runtime",
                "s0-int8-static/cli", "s0-int8-dynamic/cli"):
        if key in runs and runs[key]["peak_rss_mb"] is not None:
            value = runs[key]["peak_rss_mb"]
            bar(f"peak RSS, {key}, 100 prompts", f"<= {BAR_RSS_MB:g} MB", value, "{:.1f} MB",
                value <= BAR_RSS_MB and runs[key]["returncode"] == 0)
    for key in ("s0-int8-static/runtime", "s0-int8-dynamic/runtime"):
        if key in runs and "child_torch_imported" in runs[key]:
            imported = runs[key]["child_torch_imported"]
            bar(f"torch not imported ({key})", "'torch' not in sys.modules", None, "", not imported)
            bars[-1]["measured_text"] = "torch imported" if imported else "torch not imported"
    for key, check in results.get("memory", {}).get("cli_torch_check", {}).items():
        imported = check.get("torch_imported", True)
        bar(f"torch not imported ({key})", "'torch' not in sys.modules", None, "",
            not imported and check.get("returncode") == 0, f"exit {check.get('returncode')}")
        bars[-1]["measured_text"] = "torch imported" if imported else "torch not imported"
    for key, row in results.get("fidelity", {}).get("rows", {}).items():
        if bundles.get(key, {}).get("role") == "informational":
            continue
        for source in ("manifest", "recomputed"):
            fid = row[source]
            if not fid:
                continue
            ok = fid["mean_cosine"] >= GATE_MEAN and fid["worst_cosine"] >= GATE_WORST
            bar(f"fidelity gate {key} vs {row['vs']} ({source}, {fid['prompts']} eval prompts)",
                f"mean >= {GATE_MEAN}, worst >= {GATE_WORST}", fid["mean_cosine"], "{:.5f}", ok,
                f"worst {fid['worst_cosine']:.5f}")
            bars[-1]["measured_text"] = f"mean {fid['mean_cosine']:.5f}, worst {fid['worst_cosine']:.5f}"
    for key, entry in results["builds"].items():
        if entry.get("status") == "failed":
            bar(f"build {key}", "builds", None, "", False, "; ".join(entry.get("log_tail", []))[-200:])
            bars[-1]["measured_text"] = f"failed (exit {entry.get('returncode')})"
    return bars


def verdict(passed: bool | None, informational: bool = False) -> str:
    if informational:
        return "n/a" if passed is None else ("(pass)" if passed else "(fail)")
    return "n/a" if passed is None else ("PASS" if passed else "**FAIL**")


def render_report(results: dict[str, Any]) -> str:
    env, sizes, bundles = results["environment"], results["sizes"], results["bundles"]
    out = [
        "# INT8 benchmark (issue 4): S0 INT8 vs the SAM3 teacher",
        "",
        "> **All figures come from random/synthetic weights** (seed 0, no real checkpoint). Sizes and "
        "latencies do not depend on weight values; fidelity figures and the number of layers the quantizer "
        "keeps in float do, so they say nothing about trained models.",
        "",
        f"- Generated {results['created']} by `{results['command']}` ({results['mode']} run, "
        f"{results['runtime_s'] / 60:.1f} min including {results['build_s'] / 60:.1f} min of bundle builds)",
        f"- Device: {env['device']} ({env['cpu_count']} CPUs visible; SIMD: "
        f"{', '.join(env.get('cpu_flags') or ['?'])}), {env['threads']} intra-op threads; "
        f"ONNX Runtime {env['versions']['onnxruntime']} (CPUExecutionProvider), torch {env['versions']['torch']}, "
        f"edgeseg {env['versions']['edgeseg']} @ {str(env['git'].get('commit'))[:10]}"
        f"{' (tracked files modified)' if env['git'].get('tracked_changes') else ''}, Python {env['python']}",
        "- MB = 10^6 bytes throughout.",
    ]
    flags = env.get("cpu_flags")
    if flags is not None and not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags):
        out.append("- This CPU has no VNNI/AMX INT8 dot-product instructions: ONNX Runtime's INT8 kernels gain "
                   "little over FP32 here; expect larger INT8 speed-ups on CPUs with VNNI (and on GPUs/NPUs).")
    for phase in ("latency", "memory"):
        cpu = (results.get(phase) or {}).get("background_cpu", {})
        other = cpu.get("other_cores")
        if other is None:
            continue
        line = (f"- Other processes on this machine used {other:.2f} of {cpu['cpus']} cores on average during the "
                f"{phase} phase")
        if other > 0.1:
            line += (" -- **the machine was not idle: absolute timings of this phase are inflated** (ratios between "
                     "interleaved candidates are affected less)" if phase == "latency" else
                     " (peak RSS does not depend on it; wall times do)")
        out.append(line + ".")
    out += [
        "",
        "## Bars",
        "",
        md_table(["bar", "target", "measured", "result", "note"],
                 [[b["bar"], b["target"], b["measured_text"], verdict(b["passed"], b.get("informational", False)),
                   b["note"]] for b in results["bars"]]),
        "",
        "Rows marked (info) are not bars: they describe `s0-int8-static-allint8`, the S0 static bundle quantized "
        "with the gate relaxed to mean >= 0.998 so that no layer stays in float (what a fully INT8 S0 gives; with "
        "random weights the real gate keeps layers in float).",
        "",
        "## Size",
        "",
        f"FP32 SAM3 text encoder (state dict, `edgeseg info --encoder sam3 --json` bytes_fp32): "
        f"{sizes['sam3_fp32_state_dict_bytes']:,} bytes ({sizes['sam3_fp32_state_dict_bytes'] / MB:.1f} MB). "
        "Bundle = every file in the bundle directory (model, vocabulary, reference data, manifest).",
        "",
    ]
    rows = []
    for key, b in bundles.items():
        rows.append([key, b["label"], f"{b['bytes_total']:,}", f"{b['bytes_total'] / MB:.2f}",
                     f"{b['bytes_model'] / MB:.2f}", f"{sizes['sam3_fp32_state_dict_bytes'] / b['bytes_total']:.1f}x",
                     f"{b.get('excluded_layers_count', '-')}" if b["precision"] == "int8" else "-"])
    out += [md_table(["bundle", "what", "bytes", "MB", "model.onnx MB", "SAM3 FP32 / bundle", "float layers"], rows,
                     "llrrrrr"), ""]
    lat = results.get("latency")
    if lat:
        out += ["## Latency", "", lat["method"] + ".", ""]
        for batch, table in lat["batches"].items():
            rows = []
            for key, r in table.items():
                first = r.get("first_call_after_switch")
                rows.append([key, str(r["context_length"]), f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}",
                             f"{r['p99_ms']:.2f}", f"{r['prompts_per_s']:.1f}", str(r["samples"]),
                             f"{first['p50_ms']:.2f}" if first else "-",
                             f"{r.get('speedup_vs_torch_fp32_teacher', float('nan')):.1f}x",
                             f"{r.get('speedup_vs_ort_fp32_teacher', float('nan')):.1f}x"])
            out += [f"### Batch {batch}", "",
                    md_table(["candidate", "ctx", "p50 ms", "p95 ms", "p99 ms", "prompts/s (p50)", "calls",
                              "1st call after switch p50 ms", "x vs torch FP32 teacher", "x vs ORT FP32 teacher"],
                             rows, "lrrrrrrrrr"), ""]
        out += ["p99 over fewer than 100 calls is close to the maximum. The teacher runs at context 32 and S0 at "
                "context 16 (each at its own context length, as deployed).", ""]
    tok = results.get("tokenizer")
    if tok:
        rows = []
        for length in (16, 32):
            t = tok[f"context_{length}"]
            rows.append([str(length), f"{t['cold']['p50_ms']:.3f}", f"{t['cold']['p95_ms']:.3f}",
                         f"{t['cold']['mean_ms']:.3f}", f"{t['warm']['p50_ms']:.4f}"])
        out += ["### Tokenizer (per prompt, not included above)", "", tok["method"] + ". Constructing a Tokenizer "
                f"(reading the vocabulary) takes {tok['construct_ms']:.0f} ms once per process.", "",
                md_table(["ctx", "cold p50 ms", "cold p95 ms", "cold mean ms", "warm p50 ms"], rows, "rrrrr"), ""]
    gemm = results.get("gemm")
    if gemm:
        import gemm_ceiling

        out += ["### Why these ratios: MACs and this CPU's GEMM throughput", "",
                "`benchmarks/gemm_ceiling.py`, run in this benchmark: " + gemm["how"] + ". On a CPU whose INT8 "
                "products run no faster than FP32 ones (no VNNI/AMX here), the latency ratio stays near the MAC "
                "ratio times the teacher's and S0's GEMM efficiencies; the 150x/80x bars need INT8 products about "
                "3x faster than FP32 ones at S0's shapes (VNNI, AMX, ARM dot-product, GPUs, NPUs).", "",
                *gemm_ceiling.render(gemm), ""]
    mem = results.get("memory")
    if mem:
        rows = []
        for key, r in mem["runs"].items():
            rss = r["peak_rss_mb"]
            rows.append([key, r["what"], "n/a" if rss is None else f"{rss:.1f}",
                         str(r.get("child_torch_imported", "-")), f"{r['wall_s']:.1f}", str(r["returncode"])])
        out += ["## Memory (peak RSS of a fresh process)", "", mem["method"] + ".", "",
                md_table(["run", "what", "peak RSS MB", "torch imported", "wall s", "exit"], rows, "llrlrr"), ""]
        base = mem["runs"].get("sam3-torch-fp32", {}).get("peak_rss_mb")
        for key in ("s0-int8-static/runtime", "s0-int8-dynamic/runtime"):
            rss = mem["runs"].get(key, {}).get("peak_rss_mb")
            if base and rss:
                out.append(f"- torch FP32 teacher / {key}: {base / rss:.1f}x less peak memory")
        for key, check in mem.get("cli_torch_check", {}).items():
            out.append(f"- `edgeseg encode --bundle` ({key}): torch imported = {check.get('torch_imported')} "
                       f"(exit {check.get('returncode')})")
        out.append("")
        for key, stages in mem.get("stages", {}).items():
            rows = [[name, f"{v['VmRSS_kb'] * 1024 / MB:.1f}", f"{v['VmHWM_kb'] * 1024 / MB:.1f}"]
                    for name, v in stages.items()]
            out += [f"Where the memory goes ({key}, {mem['stages_method']}):", "",
                    md_table(["step", "VmRSS MB", "VmHWM (peak) MB"], rows, "lrr"), ""]
    fid = results.get("fidelity")
    if fid:
        rows = []
        for key, r in fid["rows"].items():
            m, c = r["manifest"] or {}, r["recomputed"]
            rows.append([key, r["vs"], f"{m.get('mean_cosine', float('nan')):.5f}",
                         f"{m.get('worst_cosine', float('nan')):.5f}", str(m.get("prompts", "-")),
                         f"{c['mean_cosine']:.5f}", f"{c['worst_cosine']:.5f}", str(c["prompts"]),
                         f"{c['max_abs_diff']:.3g}", str(c["masks_equal"]),
                         f"{r['self_check_vs_torch_reference']['mean_cosine']:.5f}", str(r["excluded_layers_count"])])
        out += ["## Fidelity (INT8 vs FP32, eval split)", "", fid["method"] + ".", "",
                md_table(["INT8 bundle", "vs", "manifest mean", "manifest worst", "n", "recomputed mean",
                          "recomputed worst", "n", "max abs diff", "masks equal", "self-check mean vs torch",
                          "float layers"], rows, "llrrrrrrrlrr"), ""]
    builds = results["builds"]
    rows = [[k, v.get("status", "-") + (" (stale)" if v.get("stale") else ""),
             "-" if not v.get("build_s") else f"{v['build_s']:.0f}",
             (v.get("built_record") or {}).get("built", results["created"] if v.get("build_s") else "-"),
             f"`{v.get('command', '-')}`"] for k, v in builds.items()]
    out += ["## Bundles", "", "Built with the `edgeseg` CLI into `--work` and reused while their manifests match "
            "(encoder, precision, mode, calibration, gate, source model sha256, edgeseg/onnxruntime versions).", "",
            md_table(["bundle", "status", "build s", "built at", "command"], rows, "llrll"), ""]
    for key, v in builds.items():
        if v.get("stale"):
            out.append(f"- {key}: {v['stale']}")
    for key, b in bundles.items():
        if b.get("excluded_layers"):
            out.append(f"- {key}: {b['excluded_layers_count']} of {b['layers']} weight-bearing layers kept in float: "
                       + ", ".join(f"`{n}`" for n in b["excluded_layers"]))
    if results.get("plot"):
        out += ["", f"![p50 latency and bundle size]({results['plot']})"]
    out += ["", f"_{WEIGHTS_NOTE}._", ""]
    return "\n".join(out)


def plot(results: dict[str, Any], out_dir: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib is not installed: no plot")
        return None
    lat = results.get("latency", {}).get("batches", {})
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    ax = axes[0]
    keys = list(next(iter(lat.values())).keys()) if lat else []
    width = 0.8 / max(1, len(lat))
    for i, (batch, table) in enumerate(lat.items()):
        xs = [j + i * width for j in range(len(keys))]
        ax.bar(xs, [table[k]["p50_ms"] for k in keys], width, label=f"batch {batch}")
    ax.set_xticks([j + width * (len(lat) - 1) / 2 for j in range(len(keys))], keys, rotation=30, ha="right",
                  fontsize=8)
    b1 = lat.get("1", {})
    for ref, target, color in (("sam3-torch-fp32", BAR_SPEEDUP_TORCH, "tab:red"),
                               ("sam3-fp32", BAR_SPEEDUP_ORT, "tab:purple")):
        if ref in b1:
            ax.axhline(b1[ref]["p50_ms"] / target, color=color, linestyle="--", linewidth=1,
                       label=f"batch-1 bar: {ref} / {target:g}")
    ax.set_yscale("log")
    ax.set_ylabel("p50 latency, ms (log)")
    ax.set_title(f"p50 latency, {results['environment']['threads']} threads")
    ax.legend(fontsize=8)
    ax = axes[1]
    names = list(results["bundles"].keys())
    values = [results["bundles"][k]["bytes_total"] / MB for k in names]
    ax.bar(["sam3 fp32 state dict"] + names, [results["sizes"]["sam3_fp32_state_dict_bytes"] / MB] + values,
           color="tab:gray")
    ax.axhline(BAR_SIZE_MB, color="tab:red", linestyle="--", label=f"{BAR_SIZE_MB:g} MB bar")
    ax.set_yscale("log")
    ax.set_ylabel("MB (log)")
    ax.set_title("size")
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    ax.legend()
    fig.suptitle("edgeseg INT8 benchmark - random/synthetic weights", fontsize=11)
    fig.tight_layout()
    name = "summary.png"
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    return name


# -- main -----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/reports/int8", help="results.json/report.md folder")
    p.add_argument("--work", type=Path, default=ROOT / "benchmarks/work", help="bundles (git-ignored; reused)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for ORT and torch")
    p.add_argument("--rounds", type=int, default=None, help="interleaved latency rounds (default 15, --quick 5)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up calls per candidate and batch")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--target-s", type=float, default=0.15,
                   help="aim for this much time per candidate per round (fast candidates get several calls)")
    p.add_argument("--max-calls", type=int, default=25, help="most calls per candidate per round")
    p.add_argument("--gap-ms", type=float, default=20.0, help="pause before each candidate's calls in a round")
    p.add_argument("--no-block-warmup", dest="block_warmup", action="store_false",
                   help="do not make an untimed call before each fast candidate's timed calls in a round")
    p.add_argument("--fidelity-prompts", type=int, default=200, help="eval prompts for the recomputed S0 fidelity")
    p.add_argument("--teacher-fidelity-prompts", type=int, default=None,
                   help="eval prompts for the recomputed teacher fidelity (default 100, --quick 32)")
    p.add_argument("--rss-batch", type=int, default=DEFAULT_BATCH,
                   help=f"batch size of the memory children ({DEFAULT_BATCH}: the runtime's default for bundles)")
    p.add_argument("--skip-teacher-int8", action="store_true", help="do not build/measure teacher INT8")
    p.add_argument("--teacher-static", action="store_true",
                   help="also build teacher INT8 static Q/DQ (slow: calibration of the 353M teacher on CPU)")
    p.add_argument("--skip-all-int8", action="store_true",
                   help="skip the informational S0 static bundle built with a relaxed gate (all layers INT8)")
    p.add_argument("--skip-torch-teacher", action="store_true", help="no in-process torch teacher (latency)")
    p.add_argument("--teacher-memory", action="store_true",
                   help="also measure peak RSS of the teacher bundles (about 1.5 min each on 2 cores)")
    p.add_argument("--wait-idle", type=float, default=0.0,
                   help="before the latency rounds, wait up to this many seconds for other processes to go idle")
    p.add_argument("--rebuild", action="store_true", help="rebuild every bundle")
    p.add_argument("--reuse-any", action="store_true",
                   help="reuse bundles whose manifest matches even if edgeseg's export/quantize sources changed")
    p.add_argument("--quick", action="store_true",
                   help="fewer rounds and teacher prompts; no torch-teacher memory child")
    p.add_argument("--strict", action="store_true", help="exit 1 when a bar fails (default: exit 0 with a report)")
    args = p.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    if args.rounds is None:
        args.rounds = 5 if args.quick else 15
    if args.teacher_fidelity_prompts is None:
        args.teacher_fidelity_prompts = 32 if args.quick else 100
    return args


def spaced(prompts: list[str], count: int, offset: bool = False) -> list[str]:
    """``count`` evenly spaced prompts, as ``edgeseg quantize`` picks its gate prompts; with ``offset``
    the ones half a step later, so that they differ from the gate's when the counts are equal."""
    step = max(1, len(prompts) // count)
    return prompts[step // 2 if offset else 0::step][:count]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[int8-bench] %(name)s: %(message)s")
    started = time.perf_counter()
    work, out_dir = args.work.resolve(), args.out.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    say(f"{'quick' if args.quick else 'full'} run; work {work}; out {out_dir}; {WEIGHTS_NOTE}")

    import torch

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass

    from edgeseg.corpus import load_split
    from edgeseg.runtime import load

    # 1. bundles
    specs = bundle_specs(args)
    by_key = {s.key: s for s in specs}
    t0 = time.perf_counter()
    builds = build_bundles(specs, work, args.rebuild, not args.reuse_any)
    build_s = time.perf_counter() - t0
    available = {k: work / k for k, v in builds.items() if v.get("status") in ("built", "reused")}

    # 2. sizes
    info = json.loads(subprocess.run(edgeseg_command() + ["info", "--encoder", "sam3", "--json"], check=True,
                                     capture_output=True, text=True, cwd=ROOT).stdout)
    bundles = {k: bundle_facts(by_key[k], p) for k, p in available.items()}
    sizes = {"sam3_fp32_state_dict_bytes": int(info["bytes_fp32"]), "sam3_params": int(info["params"]),
             "how": "edgeseg info --encoder sam3 --json (bytes_fp32); bundles: sum of every file's size",
             "bundles_bytes": {k: b["bytes_total"] for k, b in bundles.items()},
             "ratio_sam3_fp32_over_bundle": {k: info["bytes_fp32"] / b["bytes_total"] for k, b in bundles.items()}}
    for key, b in bundles.items():
        say(f"size: {key}: {b['bytes_total']:,} bytes ({b['bytes_total'] / MB:.2f} MB), SAM3 FP32 / bundle = "
            f"{info['bytes_fp32'] / b['bytes_total']:.1f}x")

    evaluation = load_split("eval")
    results: dict[str, Any] = {
        "benchmark": "int8 (issue 4)", "weights": WEIGHTS_NOTE, "mode": "quick" if args.quick else "full",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python benchmarks/int8_bench.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "environment": environment(args.threads),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "builds": builds, "bundles": bundles, "sizes": sizes, "units": {
            "bytes": "bytes", "*_mb": "decimal megabytes (1e6 bytes)", "*_ms": "milliseconds", "*_s": "seconds",
            "peak_rss_kb": "kibibytes (kernel ru_maxrss)", "speedup_*": "ratio of p50 latencies (reference / this)",
            "prompts_per_s": "batch / p50"},
    }

    # tokenizer
    say("tokenizer timing")
    results["tokenizer"] = tokenizer_timing(spaced(evaluation, 200))

    # 4. memory (fresh processes, before this process loads big models)
    prompts_file = work / "rss_prompts.txt"
    prompts_file.write_text("\n".join(spaced(evaluation, 100)) + "\n", encoding="utf-8")
    meter = CpuMeter()
    results["memory"] = memory_phase(args, work, available, prompts_file, args.quick)
    results["memory"]["background_cpu"] = meter.stop()

    # 5. fidelity and 3. latency (in process)
    runners = {}
    for key, path in available.items():
        say(f"loading {key}")
        runners[key] = load(path, threads=args.threads)
    s0_prompts = spaced(evaluation, args.fidelity_prompts, offset=True)
    teacher_prompts = spaced(evaluation, args.teacher_fidelity_prompts, offset=True)
    fid_prompts = {k: (teacher_prompts if k.startswith("sam3") else s0_prompts) for k in runners}
    pairs = [("s0-int8-static", "s0-fp32"), ("s0-int8-dynamic", "s0-fp32"), ("s0-int8-static-allint8", "s0-fp32"),
             ("s0-int8-static-pruned", "s0-fp32"),
             ("sam3-int8-dynamic", "sam3-fp32"), ("sam3-int8-static", "sam3-fp32")]
    results["fidelity"] = fidelity_phase(runners, pairs, fid_prompts, available)

    torch_model = None
    if not args.skip_torch_teacher:
        from edgeseg.encoders import build_encoder

        say("building the torch FP32 teacher (random weights)")
        torch_model = build_encoder("sam3", seed=0)
    candidates = make_candidates(args, available, by_key, runners, torch_model)
    idle = wait_for_idle(args.wait_idle) if args.wait_idle > 0 else {"other_cores_before": background_load()}
    meter = CpuMeter()
    results["latency"] = latency_phase(candidates, args)
    results["latency"]["background_cpu"] = {**meter.stop(), **idle}
    other = results["latency"]["background_cpu"]["other_cores"]
    if other is not None:
        say(f"latency: other processes used {other:.2f} core(s) on average during the timed rounds")
    for batch, table in results["latency"]["batches"].items():
        for key, row in table.items():
            say(f"latency b{batch}: {key}: p50 {row['p50_ms']:.2f} ms, p95 {row['p95_ms']:.2f}, p99 "
                f"{row['p99_ms']:.2f} ({row['samples']} calls); x{row.get('speedup_vs_torch_fp32_teacher', 0):.1f} "
                f"vs torch teacher, x{row.get('speedup_vs_ort_fp32_teacher', 0):.1f} vs ORT teacher")
    for runner in runners.values():
        runner.deactivate()
    del torch_model
    if "sam3-fp32" in available and "s0-fp32" in available:
        import gemm_ceiling

        say("GEMM throughput at the teacher's and S0's shapes (why the latency ratios are what they are)")
        results["gemm"] = gemm_ceiling.estimate(available["sam3-fp32"], available["s0-fp32"], args.threads)
        for name, e in results["gemm"]["estimates"].items():
            say(f"gemm estimate {name}: {e['ratio']:.1f}x")

    # 6. outputs
    results["bars"] = make_bars(results)
    results["build_s"] = build_s
    results["runtime_s"] = time.perf_counter() - started
    results["plot"] = plot(results, out_dir)
    report = render_report(results)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(report, encoding="utf-8")
    say(f"wrote {out_dir / 'results.json'} and {out_dir / 'report.md'} in {results['runtime_s'] / 60:.1f} min")
    print()
    print(report)
    failed = [b["bar"] for b in results["bars"] if b["passed"] is False and not b.get("informational")]
    say(f"{len(failed)} bar(s) failed" + (": " + "; ".join(failed) if failed else ""))
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
