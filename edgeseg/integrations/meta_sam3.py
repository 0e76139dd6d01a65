"""Any edgeseg text source as the text encoder of Meta's SAM3 (the ``sam3`` package), image and video.

SAM3 reads text through one module, ``backbone.language_backbone`` (a ``VETextEncoder``), which
``SAM3VLBackbone.forward_text`` calls as ``module(prompts, input_boxes, device=device)`` and which returns
``(mask, memory, embeds)``:

- ``mask``: ``[B, L]`` bool, **True = padding**;
- ``memory``: ``[L, B, 256]``, sequence-first, in the model's dtype, on ``device``;
- ``embeds``: ``[L, B, width]`` token embeddings before the text transformer (width 1024 in SAM3).

The image model (``Sam3Image``, also through ``Sam3Processor.set_text_prompt``), the video model's
detector (``Sam3VideoInference.add_prompt`` -> ``detector.backbone.forward_text``) and Meta's
``Sam3VideoPredictor`` all go through it, so swapping that one module is enough.
:class:`TextEncoderAdapter` is that module: it takes edgeseg's batch-first ``memory [B, L, 256]`` and
``mask [B, L]`` (True = padding), transposes the memory, casts it to the replaced encoder's dtype and moves
both to ``device``. SAM3 reads the memory only through attention masked with ``mask`` and a masked mean,
so a source's context length (16 for the LiteText students, 32 for SAM3) is free. SAM3's grounding
never reads ``embeds``; the adapter returns zeros of the right shape (checked in the tests).

Features are cached per prompt (:class:`edgeseg.integrations.source.FeatureCache`): a video, or a
stream of frames through ``Sam3Processor``, encodes each prompt once.

Use it as a context manager (the original encoder comes back at the end) or as a plain call::

    with meta_sam3.text_encoder(processor, runner) as adapter:   # processor, model or video predictor
        state = processor.set_text_prompt("a dog", processor.set_image(image))
    adapter = meta_sam3.install(model, runner)   # ... meta_sam3.restore(model)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from edgeseg.errors import EdgesegError
from edgeseg.integrations.source import FeatureCache, TextFeatures, as_text_source, as_torch, check_features

SAM3_EMBED_WIDTH = 1024


def find_backbone(obj: Any) -> Any:
    """The ``SAM3VLBackbone`` of a ``Sam3Image``, ``Sam3Processor``, video model or ``Sam3VideoPredictor``."""
    for path in ("backbone", "model.backbone", "detector.backbone", "model.detector.backbone"):
        node = obj
        for name in path.split("."):
            node = getattr(node, name, None)
        if node is not None and hasattr(node, "language_backbone"):
            return node
    raise EdgesegError(f"{type(obj).__name__} is not a SAM3 image model, Sam3Processor, video model or video "
                       "predictor: it has no backbone.language_backbone")


def to_meta(features: Any, device: Any = None, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """edgeseg ``memory [B, L, D]`` + ``mask [B, L]`` (True = padding) -> SAM3's ``mask [B, L]`` bool and
    ``memory [L, B, D]`` in ``dtype`` on ``device``."""
    memory = as_torch(features.memory).to(device=device, dtype=dtype).transpose(0, 1)
    mask = as_torch(features.mask).to(device=device, dtype=torch.bool)
    return mask, memory


class TextEncoderAdapter(torch.nn.Module):
    """Stands in for SAM3's ``VETextEncoder``: a text source's features as ``(mask, memory, embeds)``.

    ``dtype``/``embed_width``/``device``: those of the encoder it replaces unless given. ``cache``:
    encode each prompt once (default). ``calls`` and ``seconds`` record each call SAM3 makes.
    """

    def __init__(self, source: Any, dtype: torch.dtype = torch.float32, embed_width: int = SAM3_EMBED_WIDTH,
                 device: Any = None, cache: bool = True):
        super().__init__()
        source = as_text_source(source)
        self.cache = source if isinstance(source, FeatureCache) else FeatureCache(source) if cache else None
        self.source = self.cache if self.cache is not None else source
        self.dtype, self.embed_width, self.device = dtype, int(embed_width), device
        self.original: torch.nn.Module | None = None
        self.calls = 0
        self.seconds: list[float] = []

    def forward(self, text: Sequence[str], input_boxes: Any = None, device: Any = None) -> tuple[torch.Tensor, ...]:
        if not len(text) or not all(isinstance(t, str) for t in text):
            raise EdgesegError("the edgeseg text encoder takes a list of prompt strings (pre-encoded text is not "
                               "supported)")
        if input_boxes is not None and len(input_boxes):
            raise EdgesegError("SAM3's text encoder does not take boxes inside the text (neither does this adapter)")
        t0 = time.perf_counter()
        features = check_features(self.source.encode(list(text)), len(text))
        mask, memory = to_meta(features, device if device is not None else self.device, self.dtype)
        embeds = torch.zeros(memory.shape[0], memory.shape[1], self.embed_width, dtype=self.dtype,
                             device=memory.device)
        self.calls += 1
        self.seconds.append(time.perf_counter() - t0)
        return mask, memory, embeds


def install(obj: Any, source: Any, cache: bool = True) -> TextEncoderAdapter:
    """Make ``source`` the text encoder of ``obj`` (until :func:`restore`); returns the adapter."""
    backbone = find_backbone(obj)
    current = backbone.language_backbone
    if isinstance(current, TextEncoderAdapter):
        raise EdgesegError("an edgeseg text encoder is already installed: restore() it first")
    param = next(current.parameters(), None)
    width = getattr(getattr(current, "encoder", None), "width", SAM3_EMBED_WIDTH)
    adapter = TextEncoderAdapter(source, dtype=param.dtype if param is not None else torch.float32,
                                 embed_width=int(width), device=param.device if param is not None else None,
                                 cache=cache)
    adapter.original = current
    backbone.language_backbone = adapter
    return adapter


def restore(obj: Any) -> None:
    """Put SAM3's own text encoder back (a no-op when none of ours is installed)."""
    backbone = find_backbone(obj)
    if isinstance(backbone.language_backbone, TextEncoderAdapter):
        backbone.language_backbone = backbone.language_backbone.original


@contextlib.contextmanager
def text_encoder(obj: Any, source: Any, cache: bool = True) -> Iterator[TextEncoderAdapter]:
    """``source`` as the text encoder of ``obj`` while the block runs; yields the adapter."""
    adapter = install(obj, source, cache=cache)
    try:
        yield adapter
    finally:
        restore(obj)


class OwnTextSource:
    """SAM3's own ``VETextEncoder`` as a text source (edgeseg layout): the baseline through the adapter."""

    def __init__(self, encoder: torch.nn.Module, device: Any = None):
        self.encoder = encoder
        param = next(encoder.parameters())
        self.device = device if device is not None else param.device
        self.seconds: list[float] = []

    def encode(self, prompts: Sequence[str]) -> TextFeatures:
        t0 = time.perf_counter()
        mask, memory, _ = self.encoder(list(prompts), None, device=self.device)
        self.seconds.append(time.perf_counter() - t0)
        return TextFeatures(memory.transpose(0, 1), mask)


def own_text_source(obj: Any) -> OwnTextSource:
    """SAM3's own text encoder of ``obj`` (image model, processor, video model or predictor) as a source."""
    encoder = find_backbone(obj).language_backbone
    if isinstance(encoder, TextEncoderAdapter):
        encoder = encoder.original
    return OwnTextSource(encoder)


__all__ = ["OwnTextSource", "TextEncoderAdapter", "find_backbone", "install", "own_text_source", "restore",
           "text_encoder", "to_meta"]
