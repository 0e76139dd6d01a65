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
