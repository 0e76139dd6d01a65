"""Text sources: anything that turns prompts into edgeseg's encoder output, and a per-prompt cache.

A *text source* has ``encode(prompts) -> features`` where ``features.memory`` is ``[B, L, 256]`` float and
``features.mask`` is ``[B, L]`` bool, True = padding (edgeseg's contract, batch-first). Bundle runners of
every backend (:func:`edgeseg.runtime.load`: ONNX Runtime, TensorRT, Core ML) and the benchmark's models
already are text sources; :func:`as_text_source` also wraps an edgeseg torch encoder (token ids in), a
plain function ``prompts -> (memory, mask)`` and a bundle path.

:class:`FeatureCache` keeps each prompt's features after its first encoding, so a video or a stream of
frames that asks SAM3 for the same prompt again and again encodes it once; it counts what it encoded.
Nothing here converts to a SAM3 layout: :mod:`edgeseg.integrations.meta_sam3` and
:mod:`edgeseg.integrations.transformers_sam3` do, and nothing else does.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgeseg.errors import EdgesegError


@dataclass
class TextFeatures:
    """Batch-first encoder output: ``memory [B, L, D]`` float and ``mask [B, L]`` bool (True = padding).

    Arrays are numpy or torch tensors (a torch source keeps its tensors, dtype and device)."""

    memory: Any
    mask: Any


class TextSource(Protocol):
    def encode(self, prompts: Sequence[str]) -> Any:  # an object with .memory and .mask
        ...


class FunctionSource:
    """A function ``prompts -> (memory [B, L, D], mask [B, L])`` as a text source."""

    def __init__(self, fn: Callable[[list[str]], tuple[Any, Any]]):
        self.fn = fn

    def encode(self, prompts: Sequence[str]) -> TextFeatures:
        memory, mask = self.fn(list(prompts))
        return TextFeatures(memory, mask)


class TorchEncoderSource:
    """An edgeseg torch encoder (``ids [B, L] -> (memory, mask)``), tokenized at its context length."""

    def __init__(self, model: Any, batch_size: int = 64):
        self.model = model
        self.batch_size = batch_size

    def encode(self, prompts: Sequence[str]) -> TextFeatures:
        from edgeseg.encode import encode_prompts

        out = encode_prompts(self.model, list(prompts), batch_size=self.batch_size)
        return TextFeatures(out.memory, out.mask)


def as_text_source(obj: Any) -> Any:
    """A text source for ``obj``: a runner or any object with ``encode``; an edgeseg torch encoder; a
    function ``prompts -> (memory, mask)``; or a bundle directory (loaded with :func:`edgeseg.runtime.load`)."""
    from edgeseg.encoders.base import TextEncoder

    if isinstance(obj, TextEncoder):
        return TorchEncoderSource(obj)
    if isinstance(obj, (str, os.PathLike)):
        from edgeseg.runtime import load

        return load(Path(obj))
    if callable(getattr(obj, "encode", None)):
        return obj
    if callable(obj):
        return FunctionSource(obj)
    raise EdgesegError(f"{type(obj).__name__} is not a text source: give a bundle runner, an edgeseg encoder, "
                       "a bundle directory or a function prompts -> (memory, mask)")


def check_features(features: Any, count: int) -> TextFeatures:
    """``features`` as :class:`TextFeatures`, after checking the contract's shapes and dtypes."""
    memory, mask = getattr(features, "memory", None), getattr(features, "mask", None)
    if memory is None or mask is None:
        raise EdgesegError("a text source must return an object with .memory [B, L, D] and .mask [B, L]")
    if len(memory.shape) != 3 or tuple(mask.shape) != tuple(memory.shape[:2]) or memory.shape[0] != count:
        raise EdgesegError(f"a text source returned memory {list(memory.shape)} and mask {list(mask.shape)} for "
                           f"{count} prompt(s): expected [{count}, L, D] and [{count}, L]")
    if str(mask.dtype) not in ("bool", "torch.bool"):
        raise EdgesegError(f"a text source's mask must be bool (True = padding), got {mask.dtype}")
    return TextFeatures(memory, mask)


def as_torch(array: Any) -> Any:
    """``array`` (numpy or torch) as a torch tensor; a read-only numpy array (a prompt bank's zero-copy
    hit) is copied, since torch cannot share memory it may not write."""
    import torch

    if isinstance(array, np.ndarray) and not array.flags.writeable:
        return torch.tensor(array)
    return torch.as_tensor(array)


def _stack(rows: list[Any]) -> Any:
    if type(rows[0]).__module__.startswith("torch"):
        import torch

        return torch.stack(rows)
    return np.stack(rows)


class FeatureCache:
    """A text source that encodes each distinct prompt once and serves it from memory afterwards.

    ``encoded`` counts, per prompt, how often the wrapped source encoded it (1 for every prompt, by
    construction); ``calls`` counts ``encode`` calls and
    ``seconds`` the time of each call to the wrapped source.
    ``hits`` counts the prompts of each call that the wrapped source was not asked for (served from the
    cache, or repeated within the call).
    """

    def __init__(self, source: Any):
        self.source = as_text_source(source)
        self._rows: dict[str, tuple[Any, Any]] = {}
        self.encoded: Counter[str] = Counter()
        self.calls = 0
        self.hits = 0
        self.seconds: list[float] = []

    def encode(self, prompts: Sequence[str]) -> TextFeatures:
        prompts = [str(p) for p in prompts]
        if not prompts:
            raise EdgesegError("no prompts to encode")
        self.calls += 1
        missing = list(dict.fromkeys(p for p in prompts if p not in self._rows))
        self.hits += len(prompts) - len(missing)
        if missing:
            t0 = time.perf_counter()
            features = check_features(self.source.encode(missing), len(missing))
            self.seconds.append(time.perf_counter() - t0)
            for i, prompt in enumerate(missing):
                self._rows[prompt] = (features.memory[i], features.mask[i])
                self.encoded[prompt] += 1
        rows = [self._rows[p] for p in prompts]
        return TextFeatures(_stack([r[0] for r in rows]), _stack([r[1] for r in rows]))

    def __contains__(self, prompt: str) -> bool:
        return prompt in self._rows

    def clear(self) -> None:
        self._rows.clear()


__all__ = ["FeatureCache", "FunctionSource", "TextFeatures", "TextSource", "TorchEncoderSource", "as_text_source",
           "as_torch", "check_features"]
