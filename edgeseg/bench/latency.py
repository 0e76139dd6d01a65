"""Latency: interleaved rounds over candidates, percentiles, tokenizer timing.

Candidates are zero-argument calls on prepared inputs (ids already tokenized), so only the model
is timed; the tokenizer is timed apart (:func:`tokenizer_timing`). After warm-up, candidates run in
interleaved rounds (order rotated each round, a short pause before each), so slow drift of the
machine hits all of them alike and ratios between candidates measured in one run are fair.
"""

from __future__ import annotations

import gc
import logging
import statistics
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
    group: str  # candidates of one group make the same number of timed calls per round
    sync: Callable[[], None] | None = None  # e.g. torch.cuda.synchronize, called after every timed call


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


def interleaved_latency(candidates: Sequence[Candidate], batches: Sequence[int], rounds: int, warmup: int = 2,
                        target_s: float = 0.15, max_calls: int = 25, gap_ms: float = 20.0,
                        block_warmup: bool = True, progress: Callable[[int, int], None] | None = None
                        ) -> dict[str, Any]:
    """Time every candidate at every batch size in interleaved rounds; per (candidate, batch) statistics.

    All candidates of a group make the same number of timed calls per round (sized on the group's
    slowest, to about ``target_s`` per round, at most ``max_calls``); fast candidates (under
    ``target_s / 2``) first make one untimed call per block that re-warms caches a big candidate
    evicted (reported apart as ``first_call_after_switch``). Returns ``{"batches": {"1": {key: row}},
    "method": ..., ...}`` with rows of :func:`summary_ms` plus ``prompts_per_s`` (batch / p50).
    """
    def timed(cand: Candidate, batch: int) -> float:
        t0 = time.perf_counter()
        cand.calls[batch]()
        if cand.sync is not None:
            cand.sync()
        return time.perf_counter() - t0

    plan: dict[tuple[str, int], int] = {}
    estimates: dict[tuple[str, int], float] = {}
    for cand in candidates:
        for b in batches:
            estimates[(cand.key, b)] = statistics.median([timed(cand, b) for _ in range(max(1, warmup))])
    rewarm: dict[tuple[str, int], bool] = {}
    for b in batches:
        for group in sorted({c.group for c in candidates}):
            members = [c for c in candidates if c.group == group]
            slowest = max(estimates[(c.key, b)] for c in members)
            calls = int(max(1, min(max_calls, round(target_s / max(slowest, 1e-6)))))
            for c in members:
                plan[(c.key, b)] = calls
                rewarm[(c.key, b)] = block_warmup and estimates[(c.key, b)] < target_s / 2
                log.info("%s batch %d: ~%.1f ms/call -> %d timed call(s) per round%s", c.key, b,
                         estimates[(c.key, b)] * 1e3, calls, " after 1 untimed" if rewarm[(c.key, b)] else "")
    samples: dict[tuple[str, int], list[float]] = {k: [] for k in plan}
    firsts: dict[tuple[str, int], list[float]] = {k: [] for k in plan}
    gc.collect()
    gc.disable()
    start = time.perf_counter()
    try:
        for rnd in range(rounds):
            shift = rnd % len(candidates)
            order = list(candidates[shift:]) + list(candidates[:shift])  # no candidate always runs first
            for b in batches:
                for cand in order:
                    time.sleep(gap_ms / 1e3)  # let the previous runtime's spinning threads park
                    if rewarm[(cand.key, b)]:
                        firsts[(cand.key, b)].append(timed(cand, b))
                    for _ in range(plan[(cand.key, b)]):
                        samples[(cand.key, b)].append(timed(cand, b))
            if progress is not None:
                progress(rnd + 1, rounds)
    finally:
        gc.enable()
    table: dict[str, dict[str, Any]] = {}
    for b in batches:
        rows: dict[str, Any] = {}
        for cand in candidates:
            stats = summary_ms(samples[(cand.key, b)])
            stats.update({"label": cand.label, "context_length": cand.context_length, "batch": b,
                          "calls_per_round": plan[(cand.key, b)], "prompts_per_s": b / (stats["p50_ms"] / 1e3)})
            if firsts[(cand.key, b)]:
                stats["first_call_after_switch"] = summary_ms(firsts[(cand.key, b)])
            rows[cand.key] = stats
        table[str(b)] = rows
    method = (f"in-process, model call only (ids tokenized beforehand at each candidate's own context length), "
              f"time.perf_counter per call{' (synchronized on CUDA)' if any(c.sync for c in candidates) else ''}; "
              f"{warmup} warm-up calls per candidate and batch, then {rounds} interleaved rounds: in each round "
              f"every candidate runs its calls in turn (order rotated each round, {gap_ms:g} ms pause before each "
              f"candidate), so machine drift is shared; all candidates of a group make the same number of timed "
              f"calls per round, and fast ones make one untimed call first (re-warms the caches a big candidate "
              f"evicted; reported apart as 'first call after switch'); percentiles over all timed calls (numpy "
              f"linear interpolation)")
    return {"method": method, "rounds": rounds, "warmup_calls": warmup, "target_s_per_candidate_round": target_s,
            "max_calls_per_round": max_calls, "wall_s": time.perf_counter() - start, "batches": table}


def add_ratios(batches: dict[str, dict[str, Any]], reference: str, field: str) -> None:
    """``row[field] = reference p50 / row p50`` for every row of every batch holding ``reference``."""
    for rows in batches.values():
        if reference in rows:
            for row in rows.values():
                row[field] = rows[reference]["p50_ms"] / row["p50_ms"]
