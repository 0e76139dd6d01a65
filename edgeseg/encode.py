"""Encode prompts with a torch encoder, and compare encoders side by side.

The library behind ``edgeseg encode`` and ``edgeseg compare``: tokenization is done here, outside
the model, then ids go through the encoder in batches.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from edgeseg.encoders import TextEncoder
from edgeseg.errors import EdgesegError
from edgeseg.outputs import Encoded, cosine, pooled
from edgeseg.tokenizer import get_tokenizer

log = logging.getLogger(__name__)


@torch.inference_mode()
def encode_prompts(
    model: TextEncoder,
    prompts: Sequence[str],
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> Encoded:
    """Tokenize ``prompts`` at the model's context length (padded with its pad id) and run the model on them
    in batches."""
    batch = get_tokenizer()(list(prompts), model.context_length, model.pad_id)
    device = next(model.parameters()).device
    memories, masks = [], []
    for start in range(0, len(prompts), batch_size):
        ids = torch.from_numpy(batch.ids[start : start + batch_size]).to(device)
        memory, mask = model(ids)
        memories.append(memory.float().cpu().numpy())
        masks.append(mask.cpu().numpy())
        if progress is not None:
            progress(ids.shape[0])
    return Encoded(batch.ids, np.concatenate(masks), np.concatenate(memories), batch.truncated)


def time_encoder(model: TextEncoder, ids: np.ndarray, repeats: int = 5) -> float:
    """Mean seconds of one forward on ``ids`` after one warm-up call."""
    device = next(model.parameters()).device
    tensor = torch.from_numpy(ids).to(device)
    with torch.inference_mode():
        model(tensor)
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(tensor)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return float(np.mean(times))


RANDOM = "random"  # the weights label of an encoder built without a checkpoint


def encoder_names(text: str) -> list[str]:
    """``"sam3, mobileclip-s0"`` -> the names, each a registered encoder; none or an unknown one is an error."""
    from edgeseg.encoders import get_config

    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names:
        raise EdgesegError("--encoders names no encoder")
    for name in names:
        get_config(name)
    return names


def load_encoders(names: Sequence[str], checkpoints: Mapping[str, str | os.PathLike] | None = None,
                  seed: int = 0) -> tuple[list[TextEncoder], list[str]]:
    """The named encoders, each strictly from its checkpoint or with seeded random weights.

    Returns the models and their weights labels: :data:`RANDOM`, or the checkpoint's file name.
    """
    from edgeseg.checkpoints import load_encoder

    checkpoints = checkpoints or {}
    models, labels = [], []
    for name in names:
        path = checkpoints.get(name)
        models.append(load_encoder(name, path, seed=seed))
        labels.append(RANDOM if path is None else Path(path).name)
    return models, labels


def compare_encoders(
    models: Sequence[TextEncoder], prompts: Sequence[str], repeats: int = 5, batch_size: int = 64,
    weights: Sequence[str] | None = None,
) -> list[dict]:
    """One row per model: weights, size, context, latency, and pooled cosine vs the first model.

    The first model is the reference (the teacher in ``edgeseg compare``). The cosine compares the
    masked-mean-pooled memories prompt by prompt, so encoders at different context lengths can be
    compared; it only means something with real weights. ``weights`` labels each model's weights
    (default: :data:`RANDOM` for all).
    """
    weights = list(weights) if weights is not None else [RANDOM] * len(models)
    if len(weights) != len(models):
        raise ValueError("one weights label per model")
    rows, reference = [], None
    for model, label in zip(models, weights):
        encoded = encode_prompts(model, prompts, batch_size=batch_size)
        vectors = pooled(encoded.memory, encoded.mask)
        if reference is None:
            reference = vectors
        cos = cosine(vectors, reference)
        seconds = time_encoder(model, encoded.input_ids[:batch_size], repeats)
        info = model.describe()
        rows.append({
            "encoder": model.name,
            "weights": label,
            "params": info["params"],
            "bytes_fp32": info["bytes_fp32"],
            "context_length": model.context_length,
            "batch": int(min(batch_size, len(prompts))),
            "latency_ms": seconds * 1e3,
            "truncated": encoded.truncated,
            "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min()),
        })
        log.info("%s: %.1f ms per batch", model.name, seconds * 1e3)
    return rows
