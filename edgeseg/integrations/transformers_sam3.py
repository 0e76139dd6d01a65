"""Any edgeseg text source as the text input of ``transformers``' SAM3 models (5.23.0), image and video.

What the models accept (read from ``transformers`` 5.23.0's ``modeling_sam3.py``,
``modeling_sam3_lite_text.py`` and ``modeling_sam3_video.py``):

- ``Sam3Model`` and ``Sam3LiteTextModel`` ``forward(pixel_values | vision_embeds, text_embeds=...,
  attention_mask=...)``. ``text_embeds`` must be the *output object* of ``get_text_features`` (the model
  reads ``text_embeds.pooler_output``, the projected ``[B, L, 256]`` features): a bare tensor, as the
  docstring suggests, fails with ``AttributeError``. ``attention_mask`` is ``[B, L]`` with **1 = valid
  token**, 0 = padding (the opposite of edgeseg's and Meta's mask), batch-first memory.
  :func:`text_inputs` builds both.
- ``Sam3VideoModel`` has **no** text-feature argument: its forward reads the text of each prompt from
  the inference session, and encodes it with its own text encoder only when
  ``session.prompt_embeddings[prompt_id]`` is missing. :func:`add_video_prompt` registers a prompt and
  fills that entry and ``session.prompt_attention_masks[prompt_id]``, the same dictionaries the model fills
  itself; the model then never runs its text encoder for that prompt. These are attributes of the
  session, not a documented API, so they may change in later ``transformers`` versions. Do not call the
  processor's ``add_text_prompt`` for the same prompt afterwards: it would replace the mask with one for
  its own 32-token ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from edgeseg.encoders.base import Padding
from edgeseg.errors import EdgesegError
from edgeseg.integrations.source import FeatureCache, TextFeatures, as_text_source, as_torch, check_features
from edgeseg.tokenizer import TRANSFORMERS_PAD_ID

MODEL_TYPES = ("sam3", "sam3_lite_text", "sam3_video", "sam3_lite_text_video")


def import_transformers() -> Any:
    from edgeseg.errors import require_extra

    require_extra("the transformers SAM3 integration", "transformers")
    import transformers

    return transformers


def to_transformers(features: Any, device: Any = None, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """edgeseg ``memory [B, L, D]`` + ``mask [B, L]`` (True = padding) -> ``transformers``' batch-first
    features ``[B, L, D]`` in ``dtype`` and ``attention_mask [B, L]`` int64, 1 = valid."""
    memory = as_torch(features.memory).to(device=device, dtype=dtype)
    attention_mask = (~as_torch(features.mask).to(device=device, dtype=torch.bool)).long()
    return memory, attention_mask


def _output(memory: torch.Tensor) -> Any:
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    return BaseModelOutputWithPooling(last_hidden_state=None, pooler_output=memory)


def _model_place(model: Any) -> tuple[Any, torch.dtype]:
    param = next(model.parameters())
    return param.device, param.dtype


def text_inputs(model: Any, source: Any, prompts: Sequence[str] | str) -> dict[str, Any]:
    """``text_embeds`` and ``attention_mask`` for ``model(pixel_values=..., **text_inputs(model, source, prompts))``
    (``Sam3Model`` / ``Sam3LiteTextModel``), on the model's device and in its dtype."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    import_transformers()
    features = check_features(as_text_source(source).encode(prompts), len(prompts))
    device, dtype = _model_place(model)
    memory, attention_mask = to_transformers(features, device, dtype)
    return {"text_embeds": _output(memory), "attention_mask": attention_mask}


def add_video_prompt(model: Any, session: Any, prompt: str, source: Any) -> int:
    """Register ``prompt`` in a ``Sam3VideoModel`` inference session with ``source``'s features; returns its id.

    Wrap ``source`` in a :class:`~edgeseg.integrations.source.FeatureCache` shared across sessions to
    encode each prompt once over many videos."""
    import_transformers()
    features = check_features(as_text_source(source).encode([prompt]), 1)
    device, dtype = _model_place(model)
    memory, attention_mask = to_transformers(features, session.inference_device or device, dtype)
    prompt_id = session.add_prompt(prompt)
    session.prompt_embeddings[prompt_id] = _output(memory)
    session.prompt_attention_masks[prompt_id] = attention_mask
    return prompt_id


class OwnTextSource:
    """A ``transformers`` SAM3 model's own text encoder as a text source (edgeseg layout), tokenized as
    ``Sam3Processor`` does: ``context_length`` tokens (32, as the processor pads every prompt, LiteText too),
    padded with the tokenizer's pad token (``<|endoftext|>``, 49407, in OpenAI's CLIP tokenizer files: pass
    ``pad_id`` when a checkpoint's tokenizer says otherwise), ``attention_mask`` 1 up to and including the
    first EOT. The pad id matters: the LiteText students' RepMixer convolutions see padding ids even where
    attention masks them, so padding with 0 would change the valid outputs."""

    def __init__(self, model: Any, context_length: int = 32, pad_id: int = TRANSFORMERS_PAD_ID):
        self.model = model
        self.context_length = context_length
        self.padding = Padding.of("transformers", pad_id)

    def encode(self, prompts: Sequence[str]) -> TextFeatures:
        from edgeseg.tokenizer import get_tokenizer

        ids = torch.from_numpy(get_tokenizer()(list(prompts), self.context_length, self.padding.pad_id).ids)
        padding = self.padding.mask(ids)
        device, _ = _model_place(self.model)
        with torch.inference_mode():
            out = self.model.get_text_features(input_ids=ids.to(device),
                                               attention_mask=(~padding).long().to(device))
        return TextFeatures(out.pooler_output, padding.to(device))


def load_model(path: Path, device: str = "cpu") -> Any:
    """A ``transformers`` SAM3 image model (``Sam3Model`` or ``Sam3LiteTextModel``) from a saved folder."""
    import json

    path = Path(path)
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EdgesegError(f"{path} is not a transformers model folder (no readable config.json)") from exc
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in MODEL_TYPES:
        raise EdgesegError(f"{path} holds a transformers '{model_type}' model, not SAM3 ({', '.join(MODEL_TYPES)})")
    transformers = import_transformers()
    cls = transformers.Sam3LiteTextModel if "lite_text" in model_type else transformers.Sam3Model
    try:
        return cls.from_pretrained(str(path)).to(device).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise EdgesegError(f"transformers cannot load {path}: {str(exc).splitlines()[0][:200]}") from exc


__all__ = ["FeatureCache", "OwnTextSource", "add_video_prompt", "load_model", "text_inputs", "to_transformers"]
