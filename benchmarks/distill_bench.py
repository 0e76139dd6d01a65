"""Distillation throughput: cached teacher targets vs the teacher in the loop, and cache build speed.

Measured side by side in one process, on the same student, optimizer, batches and device:

1. cache build: the teacher's memory for ``--cache-prompts`` prompts of the distill split written
   as fp16 shards with :func:`edgeseg.distill.cache.build_cache` (prompts/s, wall clock, teacher
   build excluded);
2. student training steps with targets read from that cache (memory-mapped ``.npy``);
3. student training steps with the teacher run on every batch instead (``torch.inference_mode``).

Modes 2 and 3 alternate over ``--rounds`` rounds of ``--steps`` steps each (after one untimed
warm-up step per mode), so machine-load drift hits both alike; the median step time per mode is
reported. Writes ``results.json`` and ``report.md`` to ``--out`` and prints a table. Weights are
random/synthetic (throughput does not depend on weight values).

    python benchmarks/distill_bench.py --student mobileclip-s0 --batch-size 32 --out benchmarks/reports/distill
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeseg.bench import gemm  # noqa: E402
from edgeseg.corpus import load_split  # noqa: E402
from edgeseg.distill.cache import build_cache, teacher_identity  # noqa: E402
from edgeseg.distill.train import (  # noqa: E402
    DistillConfig,
    _prepare_corpus,
    _subset,
    build_model,
    make_optimizer,
    token_loss_sums,
)


def _step(student, opt, sched, ids, target, cfg) -> float:
    memory, mask = student(ids)
    total, _, _ = token_loss_sums(memory, target, ~mask, cfg.mse_weight, cfg.cos_weight)
    loss = total / (~mask).sum().clamp_min(1)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
    opt.step()
    sched.step()
    return loss.item()


def weight_macs_per_token(model: torch.nn.Module) -> int:
    """MACs per token of the weight matrices the forward applies (edgeseg.bench.gemm's one counting rule)."""
    return gemm.count(gemm.torch_matrices(model))["macs_per_token"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="mobileclip-s0")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per mode per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cache-prompts", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="folder for results.json and report.md")
    ap.add_argument("--student-config", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--teacher-config", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    return args


def measure(args: argparse.Namespace, student_config: dict | None, teacher_config: dict | None,
            cfg: DistillConfig) -> tuple:
    """Cache build, then cached vs teacher-in-the-loop steps in alternating rounds."""
    corpus = _subset(_prepare_corpus(load_split("distill"), 16), args.cache_prompts)
    teacher = build_model("sam3", teacher_config, 16, None, 0, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        cache = build_cache(tmp, corpus.normalized, corpus.ids, teacher_identity("sam3", None, 0, teacher_config),
                            lambda: teacher, context_length=16, batch_size=64, shard_size=4096, device=args.device)
        cache_s = time.perf_counter() - started
        cache_rate = len(corpus.normalized) / cache_s

        student = build_model(args.student, student_config, 16, None, 0, device=args.device)
        for name in getattr(student, "unused_parameters", ()):
            dict(student.named_parameters())[name].requires_grad_(False)
        opt, sched = make_optimizer(student, cfg)
        rng = np.random.default_rng(0)
        n = len(cache)

        def sync() -> None:
            if torch.device(args.device).type == "cuda":
                torch.cuda.synchronize()

        def cached_step() -> None:
            rows = rng.choice(n, args.batch_size, replace=n < args.batch_size)
            ids = torch.from_numpy(np.asarray(cache.ids[rows], dtype=np.int64)).to(args.device)
            target = torch.from_numpy(cache.targets(rows)).to(args.device)
            _step(student, opt, sched, ids, target, cfg)

        teacher_forward: list[float] = []

        def teacher_step() -> None:
            rows = rng.choice(n, args.batch_size, replace=n < args.batch_size)
            ids = torch.from_numpy(np.asarray(cache.ids[rows], dtype=np.int64)).to(args.device)
            sync()
            t0 = time.perf_counter()
            with torch.inference_mode():
                target = teacher(ids)[0].half()
            sync()
            teacher_forward.append(time.perf_counter() - t0)
            _step(student, opt, sched, ids, target.clone(), cfg)

        times: dict[str, list[float]] = {"cached": [], "teacher": []}
        cached_step()
        teacher_step()
        for r in range(args.rounds):
            for mode, fn in (("cached", cached_step), ("teacher", teacher_step)):
                for _ in range(args.steps):
                    sync()
                    t0 = time.perf_counter()
                    fn()
                    sync()
                    times[mode].append(time.perf_counter() - t0)
            print(f"round {r + 1}/{args.rounds}: cached {statistics.median(times['cached']):.3f} s/step, "
                  f"teacher in loop {statistics.median(times['teacher']):.3f} s/step", file=sys.stderr)

    return corpus, cache_s, cache_rate, times, teacher_forward, teacher, student


def summarize(args: argparse.Namespace, argv: list[str] | None, measured: tuple, student_config: dict | None,
              teacher_config: dict | None) -> tuple[dict, list[str]]:
    corpus, cache_s, cache_rate, times, teacher_forward, teacher, student = measured
    cached_sps = 1.0 / statistics.median(times["cached"])
    teacher_sps = 1.0 / statistics.median(times["teacher"])
    forward_s = statistics.median(teacher_forward[1:] or teacher_forward)
    teacher_macs, student_macs = weight_macs_per_token(teacher), weight_macs_per_token(student)
    # training a layer costs ~3x its forward (forward, input gradient, weight gradient)
    mac_limit = 1.0 + teacher_macs / (3.0 * student_macs)
    result = {
        "weights": "random/synthetic",
        "student": args.student if student_config is None else student_config.get("name", "custom"),
        "teacher": "sam3" if teacher_config is None else teacher_config.get("name", "custom"),
        "device": args.device, "threads": torch.get_num_threads(), "batch_size": args.batch_size,
        "context_length": 16, "cache_prompts": len(corpus.normalized), "cache_build_s": round(cache_s, 2),
        "cache_build_prompts_per_s": round(cache_rate, 2), "cached_steps_per_s": round(cached_sps, 4),
        "teacher_in_loop_steps_per_s": round(teacher_sps, 4), "speedup": round(cached_sps / teacher_sps, 2),
        "goal_speedup": 10.0, "step_times_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "teacher_forward_s": round(forward_s, 4),
        "measured_limit": round(1.0 + forward_s / statistics.median(times["cached"]), 2),
        "teacher_macs_per_token": teacher_macs, "student_macs_per_token": student_macs,
        "mac_limit": round(mac_limit, 2),
        "limits_how": "speed-up = (teacher forward + student step) / (cached student step); measured_limit uses "
                      "the median teacher forward; mac_limit = 1 + teacher forward MACs / (3 x student forward "
                      "MACs), i.e. the speed-up if every MAC cost the same in both",
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    table = [
        "| measure (random/synthetic weights) | value |",
        "|---|---:|",
        f"| cache build ({result['cache_prompts']} prompts, fp16 [16, 256]) | "
        f"{result['cache_build_prompts_per_s']:.2f} prompts/s |",
        f"| student steps/s, cached targets (batch {args.batch_size}) | {cached_sps:.3f} |",
        f"| student steps/s, teacher in the loop (batch {args.batch_size}) | {teacher_sps:.3f} |",
        f"| speed-up (goal >= 10x) | {result['speedup']:.1f}x |",
        f"| teacher forward alone (batch {args.batch_size}, inside the teacher-in-the-loop step) | "
        f"{forward_s:.3f} s |",
        f"| MACs per token: teacher forward / student forward | {teacher_macs / 1e6:.1f} M / "
        f"{student_macs / 1e6:.1f} M |",
        f"| speed-up if every MAC cost the same: 1 + teacher / (3 x student) | {mac_limit:.1f}x |",
    ]
    return result, table


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    student_config = json.loads(args.student_config) if args.student_config else None
    teacher_config = json.loads(args.teacher_config) if args.teacher_config else None
    cfg = DistillConfig(student=args.student, out="-", batch_size=args.batch_size, steps=10**6, warmup_steps=0)
    result, table = summarize(args, argv, measure(args, student_config, teacher_config, cfg), student_config,
                              teacher_config)
    print("\n".join(table))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        report = [f"# Distillation throughput ({result['student']} student, {result['teacher']} teacher, "
                  f"{args.device}, {result['threads']} threads)", "", *table, "",
                  "Random/synthetic weights; throughput does not depend on weight values. "
                  "Command: `python benchmarks/distill_bench.py " + " ".join(argv or sys.argv[1:]) + "`", ""]
        (args.out / "bench.md").write_text("\n".join(report), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
