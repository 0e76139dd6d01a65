"""Prompt-bank benchmark (``edgeseg bench BUNDLE --bank``): a bank hit next to the encoder call, one run.

On the same prompts (the bank's) and the same bundle, side by side:

* :func:`python_latency` - in one process, a runner with the bank and one without (same bundle, same
  session options): per-call latency of ``Runner.encode`` at batch 1 and 8 for hits by exact text
  (float32 and float16 banks), hits by token ids (each prompt + " ": tokenized, then looked up) and the
  encoder call (tokenizer + model, and the model alone); in blocks, by the benchmark's block timer;
* :func:`cpp_latency` - the same through the C API (``edgeseg-bank-bench latency``, caller buffers);
* :func:`peak_rss` - fresh processes that load and encode every prompt once in batches of 8: the
  bank-only bundle and the encoder path, in Python and in C++ (``edgeseg-bank-bench serve``);
* :func:`bank_sizes` - bytes per 1,000 prompts, float16 and float32;
* :func:`dtype_fidelity` - float16 vs float32 memory on the valid tokens;
* :func:`targets` - the bars of issue 16 as ratios next to their goals.

:func:`run_bank_bench` runs them all and writes ``results.json``, ``report.md`` and ``bank.png``.
Every figure that depends on weight values is labelled random/synthetic when the bundle's are.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.bench.env import REPO_ROOT
from edgeseg.bench.memory import MB, run_measured
from edgeseg.fileio import atomic_path

log = logging.getLogger(__name__)
SCHEMA = "edgeseg.bench.bank/1"
BATCHES = (1, 8)
#: issue 16's bars: hit vs encoder at batch 1 (x faster), bank-only peak RSS (MB; C++ adds the bank's size)
GOALS = {"speedup": 1000.0, "cpp_rss_mb_plus_bank": 15.0, "python_rss_mb": 60.0}

BANK_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from edgeseg.runtime import load
bundle, prompts_file, bank, batch, threads = sys.argv[1:6]
prompts = [l for l in open(prompts_file, encoding="utf-8").read().split("\n") if l.strip()]
with load(bundle, threads=int(threads) or None, bank=bank or None) as runner:
    t1 = time.perf_counter()
    for start in range(0, len(prompts), int(batch)):
        runner.encode(prompts[start:start + int(batch)])
    t2 = time.perf_counter()
sys.stdout.write(json.dumps({"self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "onnxruntime_imported": "onnxruntime" in sys.modules, "torch_imported": "torch" in sys.modules,
                  "tokenizer_built": runner._tokenizer is not None, "prompts": len(prompts),
                  "import_load_s": t1 - t0, "encode_s": t2 - t1}) + "\n")
"""


def _batches(prompts: Sequence[str], size: int, count: int) -> list[list[str]]:
    """``count`` batches of ``size`` consecutive prompts, cycling through ``prompts``."""
    return [[prompts[(i * size + k) % len(prompts)] for k in range(size)] for i in range(count)]


def _cycling(call: Callable[[Any], Any], inputs: Sequence[Any]) -> Callable[[], Any]:
    """A zero-argument call that gives ``call`` the next of ``inputs`` each time (round and round)."""
    items = itertools.cycle(inputs)
    return lambda: call(next(items))


def python_latency(bundle: Path, banks: dict[str, Path], prompts: Sequence[str], threads: int, rounds: int = 5,
                   max_calls: int = 400, block_s: float = 0.4) -> dict[str, Any]:
    """Per-call latency of hits and of the encoder in this process, batch 1 and 8, timed in blocks by the
    benchmark's one block timer (:func:`edgeseg.bench.latency.block_latency`: pause, first call apart,
    warm-up, timed calls; order rotated over rounds), each call on the next batch of distinct prompts."""
    from edgeseg.bench.latency import Candidate, block_latency
    from edgeseg.runtime import load

    spaced = [p + " " for p in prompts]  # tokenizes like the prompt, but is not stored as text
    runners = {"encoder": load(bundle, threads=threads),
               **{f"bank_{dtype}": load(bundle, threads=threads, bank=path) for dtype, path in banks.items()}}
    encoder, length = runners["encoder"], runners["encoder"].context_length
    inputs = {size: _batches(prompts, size, max_calls) for size in BATCHES}
    ids = {size: [encoder.tokenizer(batch, length).ids for batch in inputs[size]] for size in BATCHES}
    methods: dict[str, tuple[Callable[[Any], Any], dict[int, list[Any]]]] = {
        "encoder_encode": (encoder.encode, inputs),
        "encoder_model_only": (encoder.infer, ids),
        **{f"hit_text_{d}": (runners[f"bank_{d}"].encode, inputs) for d in banks},
        "hit_ids_float32": (runners["bank_float32"].encode, {b: _batches(spaced, b, max_calls) for b in BATCHES}),
    }
    candidates = [Candidate(name, name, length, {b: _cycling(call, per[b]) for b in BATCHES})
                  for name, (call, per) in methods.items()]
    timing = block_latency(candidates, BATCHES, rounds, block_s=block_s, max_calls=max_calls)
    for runner in runners.values():
        runner.deactivate()
    out: dict[str, Any] = {}
    for size, rows in timing["batches"].items():
        table = {name: {"median_us": row["p50_ms"] * 1e3, "p95_us": row["p95_ms"] * 1e3, "calls": row["samples"],
                        "first_call_after_switch_us": row["first_call_after_switch"]["p50_ms"] * 1e3}
                 for name, row in rows.items()}
        for name, row in table.items():
            if name.startswith("hit_"):
                row["speedup_vs_encoder"] = table["encoder_encode"]["median_us"] / row["median_us"]
        out[size] = table
    return {"batches": out, "threads": threads, "rounds": rounds, "method": timing["method"],
            "how": "Runner.encode per call, each on the next batch of distinct prompts, timed in blocks (a pause, "
                   "the first call apart, warm-up, then timed calls) with the blocks' order rotated over rounds; "
                   "median of the timed calls; hit_ids = each prompt + ' ' (tokenized, then found by its token "
                   "ids); encoder_model_only = Runner.infer on ids"}


def tool_path(build: Path | None = None) -> Path:
    return Path(build or REPO_ROOT / "build" / "cpp") / "engines" / "edgeseg-bank-bench"


def _tool(tool: Path, args: Sequence[str], timeout: float = 1800) -> dict[str, Any]:
    done = subprocess.run([str(tool), *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpp_latency(tool: Path, bundle: Path, banks: dict[str, Path], prompts_file: Path, threads: int,
                runs: int = 2000, encoder_runs: int = 100) -> dict[str, Any]:
    """The C API's per-call latency (edgeseg-bank-bench latency): hits (text, ids) and the encoder."""
    if not tool.is_file():
        return {"skipped": f"{tool} is not built (make cpp)"}
    out: dict[str, Any] = {}
    for dtype, path in banks.items():
        args = [str(bundle), str(prompts_file), "--bank", str(path), "--threads", str(threads), "--runs", str(runs)]
        if dtype == "float32":
            args += ["--encoder", "--encoder-runs", str(encoder_runs)]
        out[dtype] = _tool(tool, ["latency", *args])
    f32 = out.get("float32", {})
    for size in BATCHES:
        encoder = f32.get(f"encoder_b{size}_median_us")
        for row in out.values():
            hit = row.get(f"bank_text_b{size}_median_us")
            if encoder and hit:
                row[f"speedup_b{size}"] = encoder / hit
    out["how"] = "edgeseg_encode per call into caller buffers (steady_clock), median after 10 warm-up calls"
    return out


def peak_rss(bundle: Path, bank_only: Path, prompts_file: Path, threads: int, tool: Path | None) -> dict[str, Any]:
    """Peak RSS of fresh processes encoding every prompt once (batches of 8): bank-only and encoder, Py and C++."""
    def child(target: Path) -> list[str]:
        return [sys.executable, "-c", BANK_CHILD, str(target), str(prompts_file), "", "8", str(threads)]

    out = {"python_bank_only": run_measured(child(bank_only)), "python_encoder": run_measured(child(bundle))}
    if tool is not None and tool.is_file():
        out["cpp_bank_only"] = run_measured([str(tool), "serve", str(bank_only), str(prompts_file), "--batch", "8"])
        out["cpp_encoder"] = run_measured([str(tool), "serve", str(bundle), str(prompts_file), "--batch", "8",
                                           "--threads", str(threads)])
    else:
        out["cpp_skipped"] = "edgeseg-bank-bench is not built (make cpp)"
    return out


def bank_sizes(banks: dict[str, Path]) -> dict[str, Any]:
    from edgeseg.bank import open_bank

    out = {}
    for dtype, path in banks.items():
        header = open_bank(path, verify_data=False).header
        size = path.stat().st_size
        out[dtype] = {"bytes": size, "prompts": header.prompts, "entries": header.entries,
                      "bytes_per_1000_prompts": size * 1000 / header.prompts,
                      "mb_per_1000_prompts": size * 1000 / header.prompts / MB}
    return out


def dtype_fidelity(banks: dict[str, Path]) -> dict[str, Any]:
    """float16 vs float32 bank memory on the valid (non-padding) tokens."""
    from edgeseg.bank import open_bank
    from edgeseg.outputs import token_fidelity

    f32, f16 = open_bank(banks["float32"]), open_bank(banks["float16"])
    fidelity = token_fidelity(f16.memory.astype(np.float32), f32.memory.astype(np.float64), f32.mask)
    return {**fidelity, "how": "token_fidelity(float16 bank, float32 bank) over valid tokens, per prompt entry"}


def _bar(name: str, value: float | None, goal: float, higher_is_better: bool, unit: str) -> dict[str, Any]:
    met = None if value is None else (value >= goal if higher_is_better else value <= goal)
    ratio = None if value is None else (value / goal if higher_is_better else goal / value)
    return {"bar": name, "goal": f"{'>=' if higher_is_better else '<='} {goal:,.1f}{unit}", "measured": value,
            "unit": unit, "ratio_to_goal": ratio, "met": met}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 16's bars, measured in this run; ``ratio_to_goal`` > 1 means the bar is beaten by that factor."""
    python = results["python_latency"]["batches"]["1"]["hit_text_float32"]
    cpp = results["cpp_latency"].get("float32", {})
    rss = results["rss"]
    bank_mb = results["bank_only_bank_bytes"] / MB
    cpp_rss = (rss.get("cpp_bank_only") or {}).get("peak_rss_mb")
    return [
        _bar("Python: bank hit (exact text, float32) vs the encoder call, batch 1", python["speedup_vs_encoder"],
             GOALS["speedup"], True, "x"),
        _bar("C++: bank hit (exact text, float32) vs the encoder call, batch 1", cpp.get("speedup_b1"),
             GOALS["speedup"], True, "x"),
        _bar(f"C++ bank-only process, {results['prompts']:,} prompts: peak RSS (goal 15 MB + the bank's "
             f"{bank_mb:.1f} MB)", cpp_rss, GOALS["cpp_rss_mb_plus_bank"] + bank_mb, False, " MB"),
        _bar(f"Python bank-only process, {results['prompts']:,} prompts: peak RSS",
             (rss.get("python_bank_only") or {}).get("peak_rss_mb"), GOALS["python_rss_mb"], False, " MB"),
    ]


def run_bank_bench(bundle: str | Path, prompts: Sequence[str], out: str | Path, threads: int = 2, rounds: int = 5,
                   cpp_build: Path | None = None, progress: Callable[[str], None] | None = None,
                   max_calls: int = 400, block_s: float = 0.4) -> dict[str, Any]:
    """Build float32/float16 banks and a bank-only bundle of ``prompts`` from ``bundle`` (in a temporary
    folder), measure everything side by side and write ``results.json``, ``report.md`` and ``bank.png``."""
    from edgeseg.bench.env import environment
    from edgeseg.bundle import read_manifest
    from edgeseg.runtime.bank import build_bank_only_bundle, build_from_bundle

    say = progress or (lambda message: log.info("%s", message))
    bundle, out = Path(bundle), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(bundle)
    random_weights = (manifest.get("source") or {}).get("checkpoint_sha256", "random") == "random"
    tool = tool_path(cpp_build)
    results: dict[str, Any] = {
        "schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "bundle": str(bundle),
        "encoder": manifest["encoder"], "precision": manifest["precision"], "backend": manifest["backend"],
        "prompts": len(dict.fromkeys(prompts)), "random_weights": random_weights,
        "weights": "RANDOM/SYNTHETIC WEIGHTS (latency and memory do not depend on them; the float16 fidelity does)"
        if random_weights else "checkpoint", "environment": environment(threads), "goals": GOALS,
        "load_average_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix=".bank-bench-", dir=out) as work:
        work = Path(work)
        prompts_file = work / "prompts.txt"
        prompts_file.write_text("".join(p + "\n" for p in prompts), encoding="utf-8")
        banks = {dtype: work / f"bank-{dtype}.safetensors" for dtype in ("float32", "float16")}
        say(f"bank bench: building float32 and float16 banks and a bank-only bundle of {results['prompts']} prompts")
        for dtype, path in banks.items():
            build_from_bundle(bundle, prompts, path, dtype=dtype, threads=threads)
        bank_only = work / "bank-only"
        build_bank_only_bundle(bundle, prompts, bank_only, dtype="float32", threads=threads)
        results["bank_only_bank_bytes"] = (bank_only / "bank.safetensors").stat().st_size
        say("bank bench: Python latency (bank hits vs the encoder call, in one process)")
        results["python_latency"] = python_latency(bundle, banks, prompts, threads, rounds, max_calls, block_s)
        say("bank bench: C++ latency (edgeseg-bank-bench)")
        results["cpp_latency"] = cpp_latency(tool, bundle, banks, prompts_file, threads)
        say("bank bench: peak RSS of fresh processes")
        results["rss"] = peak_rss(bundle, bank_only, prompts_file, threads, tool)
        results["size"] = bank_sizes(banks)
        results["fidelity_float16_vs_float32"] = dtype_fidelity(banks)
    results["load_average_end"] = os.getloadavg()
    results["targets"] = targets(results)
    write_report(results, out)
    return results


def _us(row: dict[str, Any] | None, key: str = "median_us") -> str:
    value = (row or {}).get(key)
    return "n/a" if value is None else f"{value:,.2f}"


def render(results: dict[str, Any]) -> str:
    """``report.md``: the bars first, then every table."""
    from edgeseg.bench.report import md_table

    bars = [[t["bar"], t["goal"], "n/a" if t["measured"] is None else f"{t['measured']:,.2f}{t['unit']}",
             "n/a" if t["ratio_to_goal"] is None else f"{t['ratio_to_goal']:.2f}x", {True: "met", False: "NOT met",
                                                                                     None: "not measured"}[t["met"]]]
            for t in results["targets"]]
    py = results["python_latency"]["batches"]
    py_rows = [[name, _us(py["1"].get(name)), _us(py["8"].get(name)),
                _f(py["1"][name].get("speedup_vs_encoder")), _f(py["8"][name].get("speedup_vs_encoder"))]
               for name in py["1"]]
    cpp = results["cpp_latency"]
    cpp_rows = [[f"{what} ({dtype})", *(_fmt(cpp.get(dtype, {}).get(f"{what}_b{b}_median_us")) for b in BATCHES)]
                for dtype in ("float32", "float16") for what in ("bank_text", "bank_ids")]
    cpp_rows.append(["encoder", *(_fmt(cpp.get("float32", {}).get(f"encoder_b{b}_median_us")) for b in BATCHES)])
    rss_rows = [[name, _fmt((row or {}).get("peak_rss_mb")), str((row or {}).get("child_onnxruntime_imported", "-"))]
                for name, row in results["rss"].items() if isinstance(row, dict)]
    size_rows = [[dtype, f"{row['bytes']:,}", f"{row['mb_per_1000_prompts']:.2f}", str(row["entries"])]
                 for dtype, row in results["size"].items()]
    fid = results["fidelity_float16_vs_float32"]
    env = results["environment"]
    return "\n\n".join([
        f"# Prompt-bank benchmark: {results['encoder']} {results['precision']} ({results['prompts']:,} prompts)",
        f"{results['weights']}. Machine: {env.get('device')}, {env.get('cpu_count')} CPUs, {env.get('threads')} "
        f"threads; created {results['created']}; load average (1, 5, 15 min) at the start "
        f"{', '.join(f'{x:.2f}' for x in results['load_average_start'])}, at the end "
        f"{', '.join(f'{x:.2f}' for x in results['load_average_end'])} (timings are only meaningful on an idle "
        "machine).",
        md_table(["bar", "goal", "measured", "ratio to goal", ""], bars, "llrrl"),
        "## Python, in one process (per call, median µs)",
        md_table(["call", "batch 1", "batch 8", "x faster b1", "x faster b8"], py_rows, "lrrrr"),
        "## C++ (C API, per call, median µs)",
        md_table(["call", "batch 1", "batch 8"], cpp_rows, "lrr") if "skipped" not in cpp else cpp["skipped"],
        "## Peak RSS of a fresh process encoding every prompt once (batches of 8)",
        md_table(["process", "peak RSS MB", "onnxruntime imported"], rss_rows, "lrl"),
        "## Bank size",
        md_table(["dtype", "bytes", "MB per 1,000 prompts", "entries"], size_rows, "lrrr"),
        f"## float16 vs float32\n\nmean token cosine {fid['mean_cosine']:.7f}, worst prompt "
        f"{fid['worst_cosine']:.7f}, max abs diff {fid['max_abs_diff']:.2e} (valid tokens, {fid['prompts']} entries; "
        f"{'random/synthetic weights' if results['random_weights'] else 'checkpoint weights'}).",
        "![bank](bank.png)" if results.get("plots") else "",
    ]) + "\n"


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}x"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.2f}"


def plot(results: dict[str, Any], path: Path) -> bool:
    """``bank.png``: per-call latency (log) of hits and the encoder, Python and C++; peak RSS per process."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot")
        return False
    py, cpp = results["python_latency"]["batches"], results["cpp_latency"]
    labels = ["Py encoder", "Py hit f32", "Py hit f16", "Py hit ids", "C++ encoder", "C++ hit f32", "C++ hit f16",
              "C++ hit ids"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for i, size in enumerate(BATCHES):
        rows = py[str(size)]
        f32, f16 = cpp.get("float32", {}), cpp.get("float16", {})
        values = [rows["encoder_encode"]["median_us"], rows["hit_text_float32"]["median_us"],
                  rows["hit_text_float16"]["median_us"], rows["hit_ids_float32"]["median_us"],
                  f32.get(f"encoder_b{size}_median_us"), f32.get(f"bank_text_b{size}_median_us"),
                  f16.get(f"bank_text_b{size}_median_us"), f32.get(f"bank_ids_b{size}_median_us")]
        axes[0].bar([j + i * 0.4 for j in range(len(labels))], [v or 0 for v in values], 0.4, label=f"batch {size}")
    axes[0].set_xticks([j + 0.2 for j in range(len(labels))], labels, rotation=30, ha="right", fontsize=8)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("per call, median µs (log)")
    axes[0].set_title("bank hit vs encoder call")
    axes[0].legend(fontsize=8)
    rss = {k: v.get("peak_rss_mb") for k, v in results["rss"].items() if isinstance(v, dict)}
    axes[1].bar(list(rss), [v or 0 for v in rss.values()], color="tab:gray")
    bank_mb = results["bank_only_bank_bytes"] / MB
    axes[1].axhline(GOALS["python_rss_mb"], color="tab:blue", linestyle="--", label="Python bank-only goal")
    axes[1].axhline(GOALS["cpp_rss_mb_plus_bank"] + bank_mb, color="tab:red", linestyle=":",
                    label="C++ bank-only goal (15 MB + bank)")
    axes[1].set_ylabel("peak RSS MB")
    axes[1].set_title(f"fresh process, {results['prompts']:,} prompts")
    axes[1].tick_params(axis="x", labelrotation=20, labelsize=8)
    axes[1].legend(fontsize=8)
    tag = " (random/synthetic weights)" if results["random_weights"] else ""
    fig.suptitle(f"prompt bank: {results['encoder']} {results['precision']}{tag}", fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return True


def write_report(results: dict[str, Any], out: Path) -> None:
    """``results.json``, ``bank.png`` and ``report.md`` in ``out`` (each written to a temporary name first)."""
    results["plots"] = ["bank.png"] if plot(results, out / "bank.png") else []
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(render(results), encoding="utf-8")


# -- the hook in ``edgeseg bench`` -------------------------------------------------------------------
def bank_target(candidates: Sequence[str]) -> Path:
    """The bundle ``edgeseg bench --bank`` measures: the first candidate that is a bundle with a model."""
    from edgeseg.errors import EdgesegError

    for candidate in candidates:
        manifest = Path(candidate) / "manifest.json"
        if manifest.is_file() and json.loads(manifest.read_text(encoding="utf-8")).get("backend") != "bank":
            return Path(candidate)
    raise EdgesegError("--bank measures prompt banks of a bundle: give a bundle candidate (e.g. the S0 INT8 bundle)")


def default_prompts(count: int = 1000) -> list[str]:
    """``count`` evenly spaced prompts of the eval split (the split the rest of ``edgeseg bench`` reads)."""
    from edgeseg.corpus import load_split

    prompts = list(dict.fromkeys(load_split("eval")))
    return prompts[::max(1, len(prompts) // count)][:count]
