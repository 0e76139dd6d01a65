"""The SAM3 image models ``edgeseg segment`` runs, behind one small interface.

An engine encodes a picture once (``image``) and grounds prompts on it (``ground``) with a text source
(edgeseg features through :mod:`edgeseg.integrations`) or, with ``source=None``, with SAM3's own text
encoder (the baseline of ``--compare-baseline``). Both return the benchmark's
:class:`~edgeseg.bench.segmentation.Grounding` (every query's score, box and mask at the mask head's
resolution, plus mask logits), so the comparison is the benchmark's own code.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from edgeseg.bench.segmentation import Grounding


class MetaImageEngine:
    """Meta's ``Sam3Image`` (sam3 package): SAM3's preprocessing, image encoder once, grounding per prompt."""

    library = "meta-sam3"

    def __init__(self, model: torch.nn.Module, resolution: int, device: str = "cpu"):
        from edgeseg.bench.segmentation import _find_stage, transform

        self.model, self.resolution, self.device = model.to(device), resolution, device
        self.prep = transform(resolution)
        self.find_stage = _find_stage(device)

    def image(self, array: np.ndarray) -> Any:
        from edgeseg.integrations.meta_build import CpuShim

        with CpuShim(), torch.inference_mode():
            return self.model.backbone.forward_image(self.prep(array).to(self.device))

    def ground(self, state: Any, source: Any, prompt: str, threshold: float) -> tuple[Grounding, float, float]:
        from edgeseg.bench.segmentation import ground
        from edgeseg.integrations import meta_sam3
        from edgeseg.integrations.meta_build import CpuShim

        with CpuShim(), torch.inference_mode():
            if source is None:
                return ground(self.model, state, prompt, threshold, self.find_stage, self.device, keep_logits=True)
            with meta_sam3.text_encoder(self.model, source):
                return ground(self.model, state, prompt, threshold, self.find_stage, self.device, keep_logits=True)


class TransformersImageEngine:
    """``transformers``' ``Sam3Model`` / ``Sam3LiteTextModel``: resize + normalize as SAM3, vision features once."""

    library = "transformers"

    def __init__(self, model: Any, device: str = "cpu"):
        from edgeseg.integrations.transformers_sam3 import OwnTextSource

        self.model, self.device = model.to(device).eval(), device
        self.resolution = int(model.config.vision_config.image_size)
        self.own = OwnTextSource(self.model)

    def image(self, array: np.ndarray) -> Any:
        from edgeseg.bench.segmentation import transform

        with torch.inference_mode():
            return self.model.get_vision_features(pixel_values=transform(self.resolution)(array).to(self.device))

    def ground(self, state: Any, source: Any, prompt: str, threshold: float) -> tuple[Grounding, float, float]:
        from edgeseg.integrations.transformers_sam3 import text_inputs

        t0 = time.perf_counter()
        inputs = text_inputs(self.model, self.own if source is None else source, [prompt])
        t1 = time.perf_counter()
        with torch.inference_mode():
            out = self.model(vision_embeds=state, **inputs)
        t2 = time.perf_counter()
        scores = (out.pred_logits.sigmoid() * out.presence_logits.sigmoid())[0]
        logits = out.pred_masks[0]
        return Grounding(scores.float().cpu().numpy(), out.pred_boxes[0].float().cpu().numpy(),
                         (logits > 0).cpu().numpy(), threshold, logits), t1 - t0, t2 - t1


@dataclass
class Pick:
    query: int
    score: float
    below_threshold: bool
    rank: int  # 1 = best-scoring query


def select(grounding: Grounding, top_k: int = 0) -> list[Pick]:
    """Detections (score > threshold), then up to ``top_k`` best-scoring queries whatever their score."""
    order = np.argsort(-grounding.scores, kind="stable")
    ranks = {int(q): i + 1 for i, q in enumerate(order)}
    picks = [int(q) for q in order if grounding.scores[q] > grounding.threshold]
    picks += [int(q) for q in order[:top_k] if int(q) not in picks]
    return [Pick(q, float(grounding.scores[q]), bool(grounding.scores[q] <= grounding.threshold), ranks[q])
            for q in picks]


def at_image_size(grounding: Grounding, picks: Sequence[Pick], height: int, width: int) -> tuple[np.ndarray, ...]:
    """Masks of ``picks`` resized to the picture (bilinear on the logits, > 0, as ``Sam3Processor``) and their
    boxes in pixels (xyxy)."""
    if not picks:
        return np.zeros((0, height, width), bool), np.zeros((0, 4), np.float32)
    index = torch.tensor([p.query for p in picks])
    logits = grounding.logits[index].float().cpu()[:, None]
    resized = torch.nn.functional.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    masks = resized[:, 0] > 0
    boxes = grounding.boxes[index.numpy()] * np.array([width, height, width, height], np.float32)
    return masks.numpy(), boxes


__all__ = ["MetaImageEngine", "Pick", "TransformersImageEngine", "at_image_size", "select"]
