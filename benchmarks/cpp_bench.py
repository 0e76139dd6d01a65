#!/usr/bin/env python
"""C++ runtime (engines/) vs the Python pipeline, measured side by side in one run on the same prompts:

1. tokenizer throughput (prompts/s): the C++ tokenizer (``edgeseg_tokenize`` over the whole prompt list,
   inside ``edgeseg-bench``) vs ``edgeseg.tokenizer.Tokenizer`` (numpy + regex + ftfy); a cold pass (empty
   BPE caches, a fresh tokenizer) and the median of warm passes;
2. encode latency at batch 1 (tokenize + ONNX Runtime, one prompt per call, median and p90 over the same
   prompts): ``edgeseg_encode`` vs ``edgeseg.runtime.load(bundle).encode``, both on ONNX Runtime CPU with
   the same intra-op thread count and the same libonnxruntime (the venv's wheel).

The two sides alternate for --rounds rounds (the machine's load drifts); each figure is the median over
the rounds.

The bundle defaults to ``mobileclip-s0`` exported with RANDOM/SYNTHETIC WEIGHTS (seed 0) into --work:
latency does not depend on weight values, but nothing here says anything about a trained model's outputs.

    make cpp                                   # build build/cpp first
    .venv/bin/python benchmarks/cpp_bench.py   # ~1 min once the bundle exists
    .venv/bin/python benchmarks/cpp_bench.py --bundle out/s0-int8 --threads 2 --out out/cpp-report

It writes ``results.json`` (the README's C++ table is rendered from ``benchmarks/reports/cpp/results.json``
by ``benchmarks/readme_table.py``) and ``report.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_NOTE = "random/synthetic weights (seed 0)"


def ensure_bundle(args: argparse.Namespace) -> Path:
    if args.bundle:
        return Path(args.bundle)
    bundle = Path(args.work) / "s0-fp32"
    if not (bundle / "manifest.json").is_file():
        print(f"exporting mobileclip-s0 ({WEIGHTS_NOTE}) to {bundle} ...", file=sys.stderr)
        bundle.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([str(Path(sys.executable).parent / "edgeseg"), "export", "--encoder", "mobileclip-s0",
                               "--out", str(bundle)], check=False)
        if proc.returncode != 0:
            raise SystemExit(f"error: exporting the benchmark bundle failed (exit {proc.returncode})")
    return bundle


def python_side(bundle: Path, prompts: list[str], passes: int, runs: int, threads: int) -> dict:
    from edgeseg.bundle import read_manifest
    from edgeseg.runtime import load
    from edgeseg.tokenizer import Tokenizer

    manifest = read_manifest(bundle)
    vocab = bundle / manifest["tokenizer"]["vocab"]
    length = int(manifest["context_length"])
    tokenizer = Tokenizer(vocab, length)
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        tokenizer(prompts)
        times.append(time.perf_counter() - start)
    warm = sorted(times[1:] or times)
    latencies = []
    with load(bundle, threads=threads) as runner:
        for i in range(10 + runs):
            start = time.perf_counter()
            runner.encode([prompts[i % len(prompts)]])
            if i >= 10:
                latencies.append(time.perf_counter() - start)
    latencies.sort()
    return {"tokenize_cold_s": times[0], "tokenize_warm_s": warm[len(warm) // 2],
            "encode_b1_median_ms": latencies[len(latencies) // 2] * 1e3,
            "encode_b1_p90_ms": latencies[min(len(latencies) - 1, len(latencies) * 9 // 10)] * 1e3}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="ONNX Runtime bundle (default: export mobileclip-s0 into --work)")
    parser.add_argument("--work", default=str(ROOT / "out" / "cpp-bench"), help="where the default bundle goes")
    parser.add_argument("--prompts", default=str(ROOT / "edgeseg" / "data" / "prompts" / "calibration.txt"),
                        help="prompts file (default: the shipped calibration split, 2,000 prompts)")
    parser.add_argument("--build", default=str(ROOT / "build" / "cpp"), help="C++ build directory (make cpp)")
    parser.add_argument("--passes", type=int, default=5, help="tokenizer passes over all prompts (first = cold)")
    parser.add_argument("--latency-runs", type=int, default=150, help="timed batch-1 encode calls per side and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating C++/Python rounds (medians reported)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads, both sides")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "reports" / "cpp"),
                        help="folder for results.json and report.md")
    args = parser.parse_args()

    bench = Path(args.build) / "engines" / "edgeseg-bench"
    if not bench.is_file():
        print(f"error: {bench} not found: build the C++ runtime first (make cpp)", file=sys.stderr)
        return 2
    bundle = ensure_bundle(args)
    prompts = [p for p in Path(args.prompts).read_text(encoding="utf-8").split("\n") if p.strip()]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8", delete=False) as fh:
        fh.write("\n".join(prompts) + "\n")  # the same prompts, one per line, for edgeseg-bench
        prompt_file = fh.name
    # Alternate the two sides for --rounds rounds (the machine's load drifts); report per-measure
    # medians over the rounds.
    cpp_rounds, py_rounds = [], []
    try:
        for _ in range(args.rounds):
            proc = subprocess.run([str(bench), str(bundle), prompt_file, "--passes", str(args.passes),
                                   "--latency-runs", str(args.latency_runs), "--threads", str(args.threads)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(proc.stderr.strip(), file=sys.stderr)
                return 2
            cpp_rounds.append(json.loads(proc.stdout))
            py_rounds.append(python_side(bundle, prompts, args.passes, args.latency_runs, args.threads))
    finally:
        Path(prompt_file).unlink()
    keys = ("tokenize_cold_s", "tokenize_warm_s", "encode_b1_median_ms", "encode_b1_p90_ms")
    cpp = {k: statistics.median(r[k] for r in cpp_rounds) for k in keys}
    py = {k: statistics.median(r[k] for r in py_rounds) for k in keys}

    n = len(prompts)
    rows = [
        ("tokenizer, cold pass (prompts/s)", n / py["tokenize_cold_s"], n / cpp["tokenize_cold_s"], "higher"),
        ("tokenizer, warm passes (prompts/s)", n / py["tokenize_warm_s"], n / cpp["tokenize_warm_s"], "higher"),
        ("encode batch 1, median (ms)", py["encode_b1_median_ms"], cpp["encode_b1_median_ms"], "lower"),
        ("encode batch 1, p90 (ms)", py["encode_b1_p90_ms"], cpp["encode_b1_p90_ms"], "lower"),
    ]
    from edgeseg.bundle import read_manifest

    manifest = read_manifest(bundle)
    print(f"\nC++ runtime vs Python, {n} prompts from {args.prompts}; bundle {bundle} ({manifest['encoder']}, "
          f"{manifest['precision']}, {WEIGHTS_NOTE}); ONNX Runtime CPU, {args.threads} intra-op thread(s); "
          f"{platform.processor() or platform.machine()}\n")
    print(f"| {'measure':<36} | {'Python':>12} | {'C++':>12} | {'C++ vs Python':>14} |")
    print(f"|{'-' * 38}|{'-' * 14}|{'-' * 14}|{'-' * 16}|")
    results = []
    for name, p, c, better in rows:
        ratio = c / p if better == "higher" else p / c
        print(f"| {name:<36} | {p:>12.1f} | {c:>12.1f} | {ratio:>13.2f}x |")
        results.append({"measure": name, "python": p, "cpp": c, "speedup": ratio})
    goal = results[1]["speedup"] >= 10
    print(f"\ntokenizer goal (>= 10x, warm): {'MET' if goal else 'NOT MET'} ({results[1]['speedup']:.1f}x); "
          f"encode latency from {WEIGHTS_NOTE}")
    write_results(args, {
        "prompts": n, "prompts_file": str(Path(args.prompts).resolve().relative_to(ROOT))
        if Path(args.prompts).resolve().is_relative_to(ROOT) else args.prompts, "bundle": str(bundle),
        "bundle_label": f"{manifest['encoder']} {manifest['precision'].upper()}, {args.threads} thread(s), "
                        f"{WEIGHTS_NOTE}", "weights": WEIGHTS_NOTE, "threads": args.threads, "rounds": args.rounds,
        "cpp": cpp, "python": py, "rows": results, "cpp_rounds": cpp_rounds, "python_rounds": py_rounds})
    return 0


def write_results(args: argparse.Namespace, results: dict) -> None:
    """results.json (with the machine, versions, git state) and report.md, through edgeseg's one report path."""
    from edgeseg.bench.env import environment
    from edgeseg.bench.report import cpp_table
    from edgeseg.fileio import atomic_path

    env = environment(args.threads)
    results.update({"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": env,
                    "dirty": env["git"].get("dirty"), "machine": f"{env['device']}, {env['cpu_count']} CPUs",
                    "command": "python benchmarks/cpp_bench.py " + " ".join(sys.argv[1:])})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("# C++ runtime vs Python\n\n" + cpp_table(results) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
