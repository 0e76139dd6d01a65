"""Encoder outputs and how to compare them (numpy only: the deployment path uses this)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Encoded:
    """What every backend returns for a batch of prompts (batch-first)."""

    input_ids: np.ndarray  # int64 [B, L]
    mask: np.ndarray  # bool [B, L], True = padding
    memory: np.ndarray  # float32 [B, L, 256]
    truncated: int = 0


def pooled(memory: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of the valid (non-padding) tokens' memory, ``[B, 256]`` (SAM3's scorer pools this way)."""
    valid = (~mask).astype(np.float64)[..., None]
    return (memory * valid).sum(1) / np.maximum(valid.sum(1), 1.0)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity along the last axis."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return num / np.maximum(den, 1e-12)


def token_fidelity(candidate: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """How close ``candidate`` memory is to ``reference`` on the valid tokens (mask False).

    Per prompt: the mean over its valid tokens of the token cosine, and the token MSE. Returns the
    mean over prompts (``mean_cosine``), the worst prompt (``worst_cosine``), the mean MSE and the
    max absolute difference. Padding positions are ignored: SAM3 never reads them.
    """
    valid = ~np.asarray(mask, bool)
    # padding rows are replaced, not multiplied by 0: whatever a backend leaves there (even NaN) is ignored
    candidate = np.where(valid[..., None], candidate.astype(np.float64), 0.0)
    reference = np.where(valid[..., None], reference.astype(np.float64), 0.0)
    cos = np.where(valid, cosine(candidate, reference), 0.0)  # [B, L]
    counts = np.maximum(valid.sum(1), 1)
    per_prompt = cos.sum(1) / counts
    mse = ((candidate - reference) ** 2).mean(-1).sum(1) / counts
    diff = np.abs(candidate - reference)[valid]
    return {
        "mean_cosine": float(per_prompt.mean()),
        "worst_cosine": float(per_prompt.min()),
        "mse": float(mse.mean()),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "prompts": int(len(per_prompt)),
    }


def retrieval(candidate: np.ndarray, reference: np.ndarray, chunk: int = 1024) -> dict[str, float]:
    """How well each candidate vector retrieves its own reference vector among all references.

    ``candidate`` and ``reference`` are ``[N, D]`` (e.g. :func:`pooled` memories of the same N
    prompts); row i of ``candidate`` should be closest, by cosine similarity, to row i of
    ``reference``. Prompt i's rank is the number of *other* references at least as similar as its
    own: ties count against it, so a predictor whose outputs are all alike (or all zero) gets at
    most chance (1/N), never a perfect score. Returns ``retrieval_top1`` and ``retrieval_top5``
    (fraction of prompts ranked 0 and below 5), ``mean_rank`` and ``retrieval_chance`` (1/N, the
    top-1 of a guess).
    """
    cand = np.asarray(candidate, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if cand.ndim != 2 or cand.shape != ref.shape or len(cand) == 0:
        raise ValueError(f"retrieval needs two [N, D] arrays of one shape, got {cand.shape} and {ref.shape}")
    a = cand / np.maximum(np.linalg.norm(cand, axis=1, keepdims=True), 1e-12)
    b = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    ranks = np.empty(len(a), dtype=np.int64)
    for start in range(0, len(a), chunk):  # [chunk, N] similarities at a time
        sims = a[start : start + chunk] @ b.T
        rows = np.arange(sims.shape[0])
        own = sims[rows, start + rows]
        counted = (sims >= own[:, None]).sum(1) - 1  # minus the own reference
        ranks[start : start + chunk] = np.where(np.isfinite(own), counted, len(b) - 1)  # NaN: last
    return {
        "retrieval_top1": float((ranks == 0).mean()),
        "retrieval_top5": float((ranks < 5).mean()),
        "mean_rank": float(ranks.mean()),
        "retrieval_chance": 1.0 / len(a),
    }
