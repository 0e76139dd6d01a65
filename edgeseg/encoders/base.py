"""What every edgeseg text encoder shares: the forward contract, parameter accounting, attention.

Contract (all encoders, all backends)::

    input_ids int64 [B, L]  ->  (memory float32 [B, L, 256], mask bool [B, L], True = padding)

How padding is read depends on the **padding semantics** the model runs with (:class:`Padding`),
which follow the implementation a checkpoint comes from:

* ``efficientsam3`` (Meta's SAM3, efficientsam3; the default): ids padded with 0 and ``mask`` is
  ``input_ids == 0`` exactly as SAM3 computes it, so the real token id 0 (``!`` before certain
  punctuation, e.g. ``!$``) counts as padding too; the students attend to every position;
* ``transformers`` (Hugging Face ``Sam3Model`` / ``Sam3LiteTextModel``): ids padded with the
  tokenizer's pad id (49407, the EOT id, for CLIP's tokenizer files) and ``mask`` is "after the
  first EOT" (transformers' ``attention_mask == 0``); the students' attention ignores those keys,
  their RepMixer convolutions still run over every position.

The mask is always computed from the ids inside the forward (so exported graphs take ids only).
The teacher is causal, so both give the same outputs at valid positions. Tokenization never
happens inside an encoder.

Forward passes contain no data-dependent Python control flow, so they trace and export to ONNX
with a dynamic batch and a fixed context length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.errors import EdgesegError
from edgeseg.tokenizer import EOT_ID, MASK_RULES, PAD_ID, SEMANTICS, TRANSFORMERS_PAD_ID

DEFAULT_SEMANTICS = "efficientsam3"
__all__ = ["DEFAULT_SEMANTICS", "MASK_RULES", "SEMANTICS", "Padding", "TextEncoder"]


@dataclass(frozen=True)
class Padding:
    """How a model pads and masks: the semantics of the implementation its checkpoint comes from."""

    semantics: str = DEFAULT_SEMANTICS
    pad_id: int = PAD_ID
    eot_id: int = EOT_ID

    @classmethod
    def of(cls, semantics: str, pad_id: int | None = None) -> Padding:
        """The padding of ``semantics``; ``pad_id`` None = its default (0, or 49407 for transformers)."""
        if semantics not in SEMANTICS:
            raise EdgesegError(f"unknown padding semantics {semantics!r}; choose one of {', '.join(SEMANTICS)}")
        default = TRANSFORMERS_PAD_ID if semantics == "transformers" else PAD_ID
        if semantics == "efficientsam3" and pad_id not in (None, PAD_ID):
            raise EdgesegError(f"efficientsam3 semantics pad with id 0 (mask = ids == 0), not {pad_id}")
        return cls(semantics, default if pad_id is None else int(pad_id))

    @property
    def masks_attention(self) -> bool:
        """Whether the students' attention ignores padding keys (transformers) or sees them (efficientsam3)."""
        return self.semantics == "transformers"

    def mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """bool ``[B, L]``, True = padding, computed from the ids with ops every target supports."""
        if self.semantics == "efficientsam3":
            return input_ids == PAD_ID
        # after the first EOT: an exclusive running count of EOTs is positive. Equal, Cast, CumSum, Sub and
        # Greater on float32 (TensorRT's CumSum takes float types only; counts <= L are exact in fp16 too)
        is_eot = (input_ids == self.eot_id).to(torch.float32)
        return (torch.cumsum(is_eot, dim=1) - is_eot) > 0.5

    def repad(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Ids packed with any pad id (SAM3's 0, say) re-padded with this one after the first EOT."""
        if self.pad_id == PAD_ID:
            return input_ids
        return input_ids.masked_fill(Padding("transformers", self.pad_id, self.eot_id).mask(input_ids), self.pad_id)

    def describe(self) -> dict[str, Any]:
        return {"semantics": self.semantics, "pad_id": self.pad_id, "mask": MASK_RULES[self.semantics],
                "student_attention": "padding keys masked" if self.masks_attention else "every position"}


class TextEncoder(nn.Module):
    """Base class: subclasses implement ``forward`` and list their unused (dead) parameters."""

    #: parameters present in checkpoints (so kept for exact loading) that never reach the output
    unused_parameters: tuple[str, ...] = ()

    def __init__(self, name: str, config: dict[str, Any], context_length: int):
        super().__init__()
        self.name = name
        self.config = dict(config)
        self.context_length = int(context_length)
        self.output_dim = int(config["output_dim"])
        #: when True, forward assumes ids of exactly ``context_length`` tokens and slices with that
        #: constant, so a traced graph has static shapes (export sets it on its inference copy)
        self.static_length = False
        #: padding semantics (pad id, mask rule, attention masking); see the module docs
        self.padding = Padding()

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    @property
    def pad_id(self) -> int:
        """The id prompts must be padded with for this model (tokenize with it)."""
        return self.padding.pad_id

    def padding_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.padding.mask(input_ids)

    def num_parameters(self, include_unused: bool = True) -> int:
        total = sum(p.numel() for p in self.parameters())
        if not include_unused:
            params = dict(self.named_parameters())
            total -= sum(params[n].numel() for n in self.unused_parameters)
        return total

    def state_dict_bytes(self) -> int:
        """Bytes of the state dict at its current dtypes (parameters and persistent buffers)."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    def describe(self) -> dict[str, Any]:
        """Facts about this encoder as a JSON-ready dict (what ``edgeseg info`` prints)."""
        params = self.num_parameters()
        fp32_bytes = sum(t.numel() * (4 if t.is_floating_point() else t.element_size())
                         for t in self.state_dict().values())
        return {
            "name": self.name,
            "family": self.config["family"],
            "description": self.config.get("description", ""),
            "params": params,
            "params_used": self.num_parameters(include_unused=False),
            "unused_parameters": list(self.unused_parameters),
            "context_length": self.context_length,
            "output_dim": self.output_dim,
            "vocab_size": int(self.config["vocab_size"]),
            "bytes_fp32": fp32_bytes,
            "padding": self.padding.describe(),
        }


class LayerNormFP32(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back to the input dtype (MobileCLIP's norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


def multi_head_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, additive_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Scaled dot-product attention over ``[B, L, W]`` inputs split into ``heads`` heads.

    Logits are ``(q / sqrt(d)) k^T (+ mask)``; the softmax runs in float32 and is cast back to the
    logits' dtype. Heads are concatenated head-major. Written with plain matmuls so that it
    exports to ONNX (and on to TensorRT) as MatMul/Softmax, with no fused kernels.
    """
    head_dim = q.shape[-1] // heads
    q = q.unflatten(-1, (heads, head_dim)).transpose(1, 2)
    k = k.unflatten(-1, (heads, head_dim)).transpose(1, 2)
    v = v.unflatten(-1, (heads, head_dim)).transpose(1, 2)
    logits = (q * head_dim**-0.5) @ k.transpose(-2, -1)
    if additive_mask is not None:
        logits = logits + additive_mask
    weights = torch.softmax(logits.float(), dim=-1).to(logits.dtype)
    return (weights @ v).transpose(1, 2).flatten(-2)


def reset_parameters_(model: nn.Module, seed: int) -> None:
    """Deterministic random weights for a model built without a checkpoint.

    Every floating tensor of the state dict is filled from one seeded generator in name order, so
    a given (encoder, context length, seed) always gives the same weights on any machine:
    norms' weights 1 and biases 0, other biases 0, BatchNorm running stats (0, 1), layer scales
    1e-5 (MobileCLIP's init), everything else N(0, 0.02).
    """
    gen = torch.Generator().manual_seed(int(seed))
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict(keep_vars=True).items()):
            if not tensor.is_floating_point():
                continue
            owner_name, _, leaf = name.rpartition(".")
            owner = modules.get(owner_name)
            is_norm = isinstance(owner, (nn.LayerNorm, nn.BatchNorm2d))
            if leaf == "running_var" or (is_norm and leaf == "weight"):
                value = torch.ones(tensor.shape)
            elif leaf in ("bias", "running_mean"):
                value = torch.zeros(tensor.shape)
            elif leaf == "layer_scale":
                value = torch.full(tensor.shape, 1e-5)
            else:
                value = torch.randn(tensor.shape, generator=gen) * 0.02
            tensor.copy_(value.to(tensor.dtype))
