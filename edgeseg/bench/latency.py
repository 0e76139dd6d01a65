"""Latency: steady-state timing in blocks, rotated across rounds; percentiles; tokenizer timing.

Candidates are zero-argument calls on prepared inputs (ids already tokenized), so only the model
is timed; the tokenizer is timed apart (:func:`tokenizer_timing`). Every candidate runs in
**blocks**, as an app runs one model at a time: a pause (the previous runtime's threads park), one
call timed apart (``first_call_after_switch``: what the first prompt after another model costs,
its caches evicted), warm-up calls (not timed), then the timed calls. A round is one block per
candidate and batch; the blocks' order is rotated from round to round so that slow drift of the
machine is shared. Steady-state figures are percentiles over the timed calls only.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    key: str
    label: str
    context_length: int
    calls: dict[int, Callable[[], Any]]  # batch -> zero-argument call on prepared ids
    sync: Callable[[], None] | None = None  # e.g. torch.cuda.synchronize, called after every timed call
    tokens: dict[int, int] | None = None  # batch -> sequence length actually run (dynamic-length candidates)


def summary_ms(seconds: Sequence[float]) -> dict[str, Any]:
    """Percentiles (numpy linear interpolation) and mean/min/max of ``seconds``, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "min_ms": float(ms.min()),
            "max_ms": float(ms.max()), "samples": int(len(ms))}


def tokenizer_timing(prompts: Sequence[str], warm_prompt: str, contexts: Sequence[int] = (16, 32),
                     warm_calls: int = 500) -> dict[str, Any]:
    """Per-prompt tokenizer time: 'cold' (fresh tokenizer, distinct prompts) and 'warm' (one cached prompt)."""
    import edgeseg.tokenizer as tok

    if hasattr(tok._read_merges, "cache_clear"):
        tok._read_merges.cache_clear()
    start = time.perf_counter()
    tokenizer = tok.Tokenizer()
    construct = time.perf_counter() - start
    result: dict[str, Any] = {
        "method": "edgeseg.tokenizer.Tokenizer.__call__ on one prompt at a time, time.perf_counter; 'cold' = a "
                  "fresh Tokenizer (empty BPE word cache) over distinct eval prompts, each timed once; 'warm' = "
                  f"the benchmark prompt {warm_prompt!r} repeated (all words cached)",
        "construct_ms": construct * 1e3, "construct_note": "Tokenizer() including reading the gzip vocabulary",
    }
    for length in contexts:
        fresh = tok.Tokenizer()
        cold = []
        for prompt in prompts:
            t0 = time.perf_counter()
            fresh([prompt], length)
            cold.append(time.perf_counter() - t0)
        warm = []
        for _ in range(warm_calls):
            t0 = time.perf_counter()
            tokenizer([warm_prompt], length)
            warm.append(time.perf_counter() - t0)
        result[f"context_{length}"] = {"cold": {**summary_ms(cold), "prompts": len(prompts)}, "warm": summary_ms(warm)}
    return result


def plan_calls(estimates: dict[tuple[str, int], float], block_s: float, min_calls: int,
               max_calls: int) -> dict[tuple[str, int], int]:
    """Timed calls per block: about ``block_s`` seconds of calls, within ``[min_calls, max_calls]``."""
    return {key: int(max(min_calls, min(max_calls, round(block_s / max(seconds, 1e-6)))))
            for key, seconds in estimates.items()}


def rotated(items: Sequence[Any], round_index: int) -> list[Any]:
    """``items`` rotated by ``round_index``: over ``len(items)`` rounds every item leads once."""
    shift = round_index % max(1, len(items))
    return list(items[shift:]) + list(items[:shift])


@dataclass
class Clock:
    """What the block runner reads time with and sleeps with (tests replace both)."""
    now: Callable[[], float] = time.perf_counter
    sleep: Callable[[float], None] = time.sleep


def run_block(call: Callable[[], Any], sync: Callable[[], None] | None, warmup: int, calls: int, pause_s: float,
              clock: Clock, warmup_s: float = float("inf")) -> tuple[float, list[float]]:
    """One block: pause, the first call (timed apart), up to ``warmup`` untimed calls (stopping once they
    have taken ``warmup_s``; at least one when ``warmup`` > 0), then ``calls`` timed calls."""
    def timed() -> float:
        t0 = clock.now()
        call()
        if sync is not None:
            sync()
        return clock.now() - t0

    clock.sleep(pause_s)
    first = timed()
    start = clock.now()
    for _ in range(warmup):
        call()
        if sync is not None:
            sync()
        if clock.now() - start >= warmup_s:
            break
    return first, [timed() for _ in range(calls)]


def block_latency(candidates: Sequence[Candidate], batches: Sequence[int], rounds: int, warmup: int = 3,
                  block_s: float = 0.4, min_calls: int = 3, max_calls: int = 50, pause_s: float = 0.1,
                  clock: Clock | None = None, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Time every candidate at every batch size in blocks over ``rounds`` rotated rounds (module docstring).

    Returns ``{"batches": {"1": {key: row}}, "method": ..., "order": [[...], ...]}``; each row holds
    :func:`summary_ms` of the timed calls, ``first_call_after_switch`` (summary of the blocks' first
    calls), ``calls_per_block`` and ``prompts_per_s`` (batch / p50).
    """
    clock = clock or Clock()
    blocks = [(c, b) for b in batches for c in candidates]
    estimates = {}
    for cand, b in blocks:  # sizing pass, not timed: also warms every model up once
        _, times = run_block(cand.calls[b], cand.sync, max(1, warmup), 1, 0.0, clock, block_s)
        estimates[(cand.key, b)] = times[0]
    plan = plan_calls(estimates, block_s, min_calls, max_calls)
    samples: dict[tuple[str, int], list[float]] = {k: [] for k in plan}
    firsts: dict[tuple[str, int], list[float]] = {k: [] for k in plan}
    order: list[list[str]] = []
    started = clock.now()
    gc.collect()
    gc.disable()
    try:
        for rnd in range(rounds):
            this_round = rotated(blocks, rnd)
            order.append([f"{c.key}@{b}" for c, b in this_round])
            for cand, b in this_round:
                first, times = run_block(cand.calls[b], cand.sync, warmup, plan[(cand.key, b)], pause_s, clock,
                                         block_s)
                firsts[(cand.key, b)].append(first)
                samples[(cand.key, b)].extend(times)
            if progress is not None:
                progress(rnd + 1, rounds)
    finally:
        gc.enable()
    return {"method": _method(warmup, rounds, pause_s, block_s, min_calls, max_calls, candidates),
            "rounds": rounds, "warmup_calls": warmup, "pause_s": pause_s, "block_s": block_s, "order": order,
            "wall_s": clock.now() - started, "batches": _rows(candidates, batches, samples, firsts, plan)}


def _rows(candidates: Sequence[Candidate], batches: Sequence[int], samples: dict, firsts: dict,
          plan: dict) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for b in batches:
        rows: dict[str, Any] = {}
        for cand in candidates:
            key = (cand.key, b)
            stats = summary_ms(samples[key])
            first = summary_ms(firsts[key])
            stats.update({"label": cand.label, "context_length": cand.context_length,
                          "tokens": (cand.tokens or {}).get(b, cand.context_length), "batch": b,
                          "calls_per_block": plan[key], "prompts_per_s": b / (stats["p50_ms"] / 1e3),
                          "first_call_after_switch": first,
                          "first_call_vs_steady": first["p50_ms"] / stats["p50_ms"]})
            rows[cand.key] = stats
        table[str(b)] = rows
    return table


def _method(warmup: int, rounds: int, pause_s: float, block_s: float, min_calls: int, max_calls: int,
            candidates: Sequence[Candidate]) -> str:
    synced = " (synchronized on CUDA)" if any(c.sync for c in candidates) else ""
    return (f"in-process, model call only (ids tokenized beforehand at each candidate's own length), "
            f"time.perf_counter per call{synced}; each candidate and batch runs in blocks: a {pause_s * 1e3:g} ms "
            f"pause, one call timed apart (first call after switching models), {warmup} untimed warm-up calls "
            f"(fewer once they take {block_s:g} s, at least one), then about {block_s:g} s of timed calls "
            f"({min_calls}-{max_calls}); {rounds} rounds of one block per "
            f"candidate and batch, the blocks' order rotated each round so that machine drift is shared; "
            f"percentiles over the timed calls (numpy linear interpolation)")


def add_ratios(batches: dict[str, dict[str, Any]], reference: str, field: str) -> None:
    """``row[field] = reference p50 / row p50`` for every row of every batch holding ``reference``."""
    for rows in batches.values():
        if reference in rows:
            for row in rows.values():
                row[field] = rows[reference]["p50_ms"] / row["p50_ms"]
