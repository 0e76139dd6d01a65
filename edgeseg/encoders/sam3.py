"""SAM3's text encoder (Meta's ``VETextEncoder``), the FP32 teacher.

A causal, pre-norm CLIP text transformer (width 1024, 24 layers, 16 heads, exact-erf GELU,
LayerNorm eps 1e-5), ``ln_final``, then ``resizer`` Linear(1024 -> 256) on every token. See
``shared/reference/encoders.md`` section 2. Differences from Meta's module, none of which change
the numbers:

* batch-first outputs ``(memory [B, L, 256], mask [B, L])`` instead of sequence-first tuples;
* attention written with plain matmuls (export-friendly) instead of ``nn.MultiheadAttention``,
  with the same parameter names (``attn.in_proj_weight`` rows q, k, v; ``attn.out_proj``);
* ``encoder.text_projection`` [1024, 512] is kept so that ``sam3.pt`` loads strictly, but it is
  never used (SAM3 discards the pooled branch); it is not part of the exported graph.

The module names mirror the checkpoint keys under ``detector.backbone.language_backbone.``.
Because attention is causal, outputs at position t depend on tokens <= t only: a context length
L <= 32 gives the first L positions of the 32-token result (only truncation changes).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgeseg.encoders.base import TextEncoder, multi_head_attention


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        width = self.in_proj_weight.shape[1]
        q, k, v = nn.functional.linear(x, self.in_proj_weight, self.in_proj_bias).split(width, dim=-1)
        return self.out_proj(multi_head_attention(q, k, v, self.heads, additive_mask))


class _MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class _ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = _Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = _MLP(width, hidden)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), additive_mask)
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, hidden: int):
        super().__init__()
        self.resblocks = nn.ModuleList(_ResidualAttentionBlock(width, heads, hidden) for _ in range(layers))

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, additive_mask)
        return x


class _CausalTextTransformer(nn.Module):
    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        width, rows = cfg["width"], cfg["max_context_length"]
        self.token_embedding = nn.Embedding(cfg["vocab_size"], width)
        self.positional_embedding = nn.Parameter(torch.empty(rows, width))
        self.transformer = _Transformer(width, cfg["layers"], cfg["heads"], cfg["mlp_ratio"] * width)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, cfg["text_projection_dim"]))
        causal = torch.full((rows, rows), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", causal, persistent=False)

    def forward(self, input_ids: torch.Tensor, length: int | None = None) -> torch.Tensor:
        length = input_ids.shape[1] if length is None else length
        x = self.token_embedding(input_ids) + self.positional_embedding[:length]
        x = self.transformer(x, self.attn_mask[:length, :length].to(x.dtype))
        return self.ln_final(x)


class SAM3TextEncoder(TextEncoder):
    """The SAM3 teacher. ``context_length`` may be 1..32 (32 is SAM3's)."""

    unused_parameters = ("encoder.text_projection",)

    def __init__(self, name: str, config: dict[str, Any], context_length: int):
        super().__init__(name, config, context_length)
        self.encoder = _CausalTextTransformer(config)
        self.resizer = nn.Linear(config["width"], config["output_dim"])

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        length = self.context_length if self.static_length else None
        return self.resizer(self.encoder(input_ids, length)), self.padding_mask(input_ids)
