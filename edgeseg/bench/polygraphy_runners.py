"""Every edgeseg runner as a polygraphy ``BaseRunner``, so polygraphy's ``Comparator`` compares any two models.

:class:`BundleRunner` wraps any bundle (``edgeseg.runtime.load``: ONNX Runtime, TensorRT, Core ML, whatever
its manifest says) and :class:`TorchEncoderRunner` a torch encoder. Both take the feed polygraphy's
data loader gives: ``prompts`` (a numpy array of strings, tokenized by each runner with its own vocabulary
at its own context length; the default) or, with ``feed="input_ids"``, int64 ids ``[B, L]`` (models of
one context length, e.g. polygraphy's own data loader or saved inputs). Both
return ``memory`` and ``mask``; with ``compare_length`` the outputs are cut to that many positions
and padding positions of ``memory`` are set to zero, so that models of different context lengths (the
teacher at 32, a student at 16) compare on the positions valid in each::

    from polygraphy.comparator import Comparator, CompareFunc
    runners = [BundleRunner("s0-fp32", compare_length=16), BundleRunner("s0-int8", compare_length=16)]
    results = Comparator.run(runners, data_loader=prompt_feeds(["a dog", "red car"]))
    Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=0.05))

:func:`compare` does exactly that and returns polygraphy's verdict with the largest differences.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata


def prompt_feeds(prompts: Sequence[str], batch_size: int = 8) -> list[dict[str, np.ndarray]]:
    """A polygraphy data loader (a list of feed dicts) of ``prompts`` in batches."""
    return [{"prompts": np.array(list(prompts[i:i + batch_size]), dtype=object)}
            for i in range(0, len(prompts), batch_size)]


class _EdgesegRunner(BaseRunner):
    """Shared by both adapters: feed -> ids at the model's context length -> trimmed, masked outputs."""

    context_length: int = 0

    def __init__(self, name: str | None, prefix: str, compare_length: int | None, feed: str):
        super().__init__(name=name, prefix=prefix)
        if feed not in ("prompts", "input_ids"):
            raise ValueError(f"feed must be 'prompts' or 'input_ids', not {feed!r}")
        self.compare_length, self.feed = compare_length, feed

    def get_input_metadata_impl(self) -> TensorMetadata:
        if self.feed == "prompts":
            return TensorMetadata().add("prompts", np.object_, (None,))
        return TensorMetadata().add("input_ids", np.int64, (None, self.context_length))

    def _tokenize(self, prompts: Sequence[str]) -> np.ndarray:  # pragma: no cover - per adapter
        raise NotImplementedError

    def _run(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - per adapter
        raise NotImplementedError

    def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict:
        if self.feed == "prompts":
            ids = self._tokenize([str(p) for p in feed_dict["prompts"]])
        else:
            ids = np.asarray(feed_dict["input_ids"], dtype=np.int64)
        start = time.perf_counter()
        memory, mask = self._run(ids)
        self.inference_time = time.perf_counter() - start
        if self.compare_length is not None:
            memory, mask = memory[:, :self.compare_length], mask[:, :self.compare_length]
            memory = np.where(mask[..., None], np.float32(0), memory)
        return OrderedDict(memory=np.ascontiguousarray(memory, dtype=np.float32), mask=np.asarray(mask, dtype=bool))


class BundleRunner(_EdgesegRunner):
    """Any edgeseg bundle (its manifest picks the backend) as a polygraphy runner."""

    def __init__(self, bundle: str | Path, threads: int | None = None, compare_length: int | None = None,
                 name: str | None = None, feed: str = "prompts"):
        super().__init__(name or Path(bundle).name, "edgeseg-bundle", compare_length, feed)
        self.bundle, self.threads, self.runner = Path(bundle), threads, None

    def activate_impl(self) -> None:
        from edgeseg.runtime import load

        self.runner = load(self.bundle, threads=self.threads)
        self.context_length = self.runner.context_length

    def deactivate_impl(self) -> None:
        self.runner.deactivate()
        self.runner = None

    def _tokenize(self, prompts: Sequence[str]) -> np.ndarray:
        return self.runner.tokenizer(list(prompts), self.context_length).ids

    def _run(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.runner.infer(ids)


class TorchEncoderRunner(_EdgesegRunner):
    """A torch encoder (``edgeseg.encoders``) as a polygraphy runner."""

    def __init__(self, model: Any, device: str = "cpu", compare_length: int | None = None, name: str | None = None,
                 feed: str = "prompts"):
        super().__init__(name or f"{model.name}-torch", "edgeseg-torch", compare_length, feed)
        self.model, self.device = model, device
        self.context_length = int(model.context_length)

    def activate_impl(self) -> None:
        self.model = self.model.to(self.device).eval()

    def deactivate_impl(self) -> None:
        pass

    def _tokenize(self, prompts: Sequence[str]) -> np.ndarray:
        from edgeseg.tokenizer import get_tokenizer

        return get_tokenizer()(list(prompts), self.context_length).ids

    def _run(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            memory, mask = self.model(torch.from_numpy(ids).to(self.device))
        return memory.float().cpu().numpy(), mask.cpu().numpy()


def compare(runners: Sequence[BaseRunner], prompts: Sequence[str], atol: float = 1e-3, rtol: float = 1e-3,
            batch_size: int = 8) -> dict[str, Any]:
    """Run ``runners`` on the same prompts with polygraphy's ``Comparator``; its verdict and worst differences."""
    from polygraphy.comparator import Comparator, CompareFunc

    results = Comparator.run(list(runners), data_loader=prompt_feeds(prompts, batch_size))
    accuracy = Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=atol, rtol=rtol))
    names = [r.name for r in runners]
    worst = {}
    for name in names[1:]:
        diffs = [np.abs(a["memory"] - b["memory"]).max() for a, b in zip(results[names[0]], results[name])]
        masks = all(np.array_equal(a["mask"], b["mask"]) for a, b in zip(results[names[0]], results[name]))
        worst[name] = {"max_abs_diff": float(max(diffs)), "masks_equal": masks}
    return {"passed": bool(accuracy), "reference": names[0], "against": worst, "atol": atol, "rtol": rtol,
            "prompts": len(prompts)}
