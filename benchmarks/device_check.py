#!/usr/bin/env python
"""The steps of benchmarks/device_check.sh (run that script: it checks for a GPU first).

Each step runs the real CLI as a user would, with a time limit, and records its outcome, wall time
and key figures in one results file (``OUT/results.json``); a failed step does not stop the others.
Weights are random/synthetic (seed 0): the figures check the CUDA paths, not model quality.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EDGESEG = [sys.executable, "-m", "edgeseg.cli"]
ENCODERS = ("sam3", "mobileclip-s0", "mobileclip-s1", "mobileclip2-l")


def step(name: str, command: list[str], log_dir: Path, limit_s: int) -> dict:
    """Run one CLI step; its exit code, wall time and the tail of its log."""
    print(f"device_check: {name}: {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    log = log_dir / f"{name}.log"
    try:
        with open(log, "w", encoding="utf-8") as fh:
            rc = subprocess.run(command, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, timeout=limit_s).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    seconds = round(time.perf_counter() - start, 1)
    tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-5:]
    print(f"device_check: {name}: {'ok' if rc == 0 else f'FAILED ({rc})'} in {seconds} s", flush=True)
    return {"command": shlex.join(command), "returncode": rc, "seconds": seconds, "ok": rc == 0, "log_tail": tail}


def parity() -> dict:
    """Every encoder (random weights, seed 0) on CUDA vs CPU, FP32, on 64 eval prompts."""
    import torch

    from edgeseg.corpus import load_split
    from edgeseg.encode import encode_prompts
    from edgeseg.encoders import build_encoder
    from edgeseg.outputs import token_fidelity

    prompts = list(load_split("eval"))[::100][:64]
    rows = {}
    for name in ENCODERS:
        model = build_encoder(name, seed=0).eval()
        with torch.inference_mode():
            cpu = encode_prompts(model, prompts)
            gpu = encode_prompts(model.cuda(), prompts)
        fid = token_fidelity(gpu.memory, cpu.memory, cpu.mask)
        rows[name] = {"max_abs_diff": float(abs(gpu.memory - cpu.memory).max()), "mean_cosine": fid["mean_cosine"],
                      "worst_cosine": fid["worst_cosine"], "masks_equal": bool((gpu.mask == cpu.mask).all()),
                      "ok": bool((gpu.mask == cpu.mask).all() and fid["worst_cosine"] > 0.9999)}
        del model
        torch.cuda.empty_cache()
    return {"prompts": len(prompts), "rows": rows, "ok": all(r["ok"] for r in rows.values()),
            "how": "edgeseg.encode.encode_prompts on CPU then CUDA, TF32 as torch defaults; token_fidelity"}


def distill_steps(out: Path, gpus: int) -> dict:
    common = ["distill", "--student", "mobileclip-s0", "--limit", "512", "--eval-limit", "32", "--steps", "20",
              "--batch-size", "32", "--warmup-steps", "2", "--eval-every", "20", "--checkpoint-every", "20",
              "--device", "cuda"]
    result = {"single": step("distill", EDGESEG + common + ["--out", str(out / "distill")], out, 180)}
    config = out / "distill" / "config.json"
    if config.is_file():
        result["single"]["final_eval"] = json.loads(config.read_text(encoding="utf-8")).get("final_eval")
    if gpus >= 2:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "edgeseg.cli"]
        result["nccl_2_processes"] = step("distill-nccl", torchrun + common + ["--out", str(out / "distill-ddp")],
                                          out, 180)
    else:
        result["nccl_2_processes"] = {"skipped": f"{gpus} GPU visible: the 2-process nccl run needs 2"}
    result["autocast"] = "bf16 on CUDA (edgeseg.distill.train)"
    return result


def bench(out: Path) -> dict:
    s0 = out / "s0-fp32"
    built = step("export-s0", EDGESEG + ["export", "--encoder", "mobileclip-s0", "--out", str(s0)], out, 120)
    if not built["ok"]:
        return {"export": built}
    run = step("bench-cuda", EDGESEG + ["bench", "mobileclip-s0", str(s0), "--device", "cuda", "--skip-segmentation",
                                        "--rounds", "3", "--eval-prompts", "64", "--out", str(out / "bench")],
               out, 240)
    results = out / "bench" / "results.json"
    if results.is_file():
        data = json.loads(results.read_text(encoding="utf-8"))
        run["p50_ms_batch_1"] = {k: r["p50_ms"] for k, r in data["latency"]["batches"]["1"].items()}
        run["gpu_peak_allocated_bytes"] = {k: r.get("child_gpu_peak_allocated_bytes")
                                           for k, r in data["memory"]["dynamic"].items()}
    return {"export": built, "bench": run}


def tensorrt(out: Path) -> dict:
    from edgeseg.targets.tensorrt import import_tensorrt

    if import_tensorrt() is None:
        message = "TensorRT is not installed (pip install tensorrt): skipping the TensorRT build and run"
        print(f"device_check: {message}", flush=True)
        return {"skipped": message}
    return step("tensorrt", EDGESEG + ["build", "--target", "gpu", "--encoder", "mobileclip-s0", "--precision", "fp16",
                                       "--out", str(out / "s0-trt-fp16")], out, 240)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    import torch

    from edgeseg.bench.env import environment

    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    started = time.perf_counter()
    gpus = torch.cuda.device_count()
    results: dict = {"environment": environment(0), "gpus": [torch.cuda.get_device_name(i) for i in range(gpus)],
                     "weights": "random/synthetic (seed 0)", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    results["parity"] = parity()
    print(f"device_check: parity CUDA vs CPU: {'ok' if results['parity']['ok'] else 'FAILED'}", flush=True)
    results["distill"] = distill_steps(args.out, gpus)
    results["bench"] = bench(args.out)
    results["tensorrt"] = tensorrt(args.out)
    results["wall_s"] = round(time.perf_counter() - started, 1)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"device_check: wrote {args.out / 'results.json'} in {results['wall_s'] / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
