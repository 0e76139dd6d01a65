"""SAM3-LiteText students: MobileCLIP text towers with a 256-d ``projector``.

One class covers the three released students; the block list in the config (data, see
``configs/*.json``) decides the architecture:

* ``mobileclip-s0``: RepMixer, 4 transformer blocks, RepMixer (width 512);
* ``mobileclip-s1``: 12 transformer blocks, width 512;
* ``mobileclip2-l``: 12 transformer blocks, width 768.

Forward (eval mode, ``shared/reference/encoders.md`` section 3.2): ``x = E[ids] + P_C``; blocks;
``final_layer_norm`` (float32 LayerNorm); ``projector`` -> 256. Quirks kept on purpose, because
the released checkpoints were trained with them:

* attention is bidirectional; under efficientsam3 semantics (the default) it is **unmasked**:
  padding tokens (id 0, whose embedding is that of ``!``) are attended to, so outputs depend on the
  context length C and on the padding. Run each checkpoint at exactly the C it was trained at.
  Under transformers semantics (``model.padding``, set by :mod:`edgeseg.checkpoints` for
  transformers checkpoints) padding keys are masked out of attention, as ``Sam3LiteTextModel`` does
  with its ``attention_mask``, while the RepMixer convolutions still see every position (so for S0
  the pad id changes valid outputs);
* the mask is ``ids == 0`` (a real token 0 counts as padding), or "after the first EOT" under
  transformers semantics (:class:`edgeseg.encoders.base.Padding`);
* the RepMixer blocks are in the unfused training form of the checkpoints (BatchNorms with running
  statistics, no 1x1 "scale" branch). ``embed_scale`` of the reference is never applied, so it
  does not exist here;
* ``encoder.projection_layer`` [D, D] is in every checkpoint but unused (pooled branch only).

The positional table here has C rows, the rows the model actually uses; released checkpoints
carry 77 rows and :mod:`edgeseg.checkpoints` reduces them (``slice`` or ``interpolate``).
Module names mirror the checkpoint keys under ``detector.backbone.language_backbone.``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgeseg.encoders.base import LayerNormFP32, TextEncoder, multi_head_attention

KEY_MASK_BIAS = -1e4  # added to padding keys' attention logits under transformers semantics


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split(self.out_proj.in_features, dim=-1)
        return self.out_proj(multi_head_attention(q, k, v, self.heads, key_bias))


class TransformerBlock(nn.Module):
    """Pre-norm block; ``pre_norm_mha`` / ``pre_norm_ffn`` indices match the checkpoint keys.

    ``key_bias`` (``[B, 1, 1, L]``, 0 or -1e4) masks padding keys out of attention (transformers
    semantics); None attends to every position (efficientsam3).
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int):
        super().__init__()
        self.pre_norm_mha = nn.Sequential(LayerNormFP32(dim), _SelfAttention(dim, heads))
        self.pre_norm_ffn = nn.Sequential(
            LayerNormFP32(dim), nn.Linear(dim, ffn_dim), nn.GELU(), nn.Dropout(0.0),
            nn.Linear(ffn_dim, dim), nn.Dropout(0.0),
        )

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor | None = None) -> torch.Tensor:
        norm, attention = self.pre_norm_mha
        x = x + attention(norm(x), key_bias)
        return x + self.pre_norm_ffn(x)


class ConvBN(nn.Module):
    """Depthwise 1 x k convolution along the sequence (zero padding k//2 each side) + BatchNorm."""

    def __init__(self, dim: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, (1, kernel), padding=(0, kernel // 2), groups=dim, bias=False)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(y))


class _BNBranch(nn.Module):
    """A MobileOne block reduced to its identity branch: a lone BatchNorm (``rbr_skip``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.rbr_skip = nn.BatchNorm2d(dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.rbr_skip(y)


class _DepthwiseMixer(_BNBranch):
    """MobileOne block with an identity BatchNorm branch and one depthwise conv+BN branch."""

    def __init__(self, dim: int, kernel: int):
        super().__init__(dim)
        self.rbr_conv = nn.ModuleList([ConvBN(dim, kernel)])

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.rbr_skip(y) + self.rbr_conv[0](y)


class _TokenMixer(nn.Module):
    def __init__(self, dim: int, kernel: int):
        super().__init__()
        self.layer_scale = nn.Parameter(torch.empty(dim, 1, 1))
        self.norm = _BNBranch(dim)
        self.mixer = _DepthwiseMixer(dim, kernel)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.layer_scale * (self.mixer(y) - self.norm(y))


class _ConvFFN(nn.Module):
    def __init__(self, dim: int, hidden: int, kernel: int):
        super().__init__()
        self.conv = ConvBN(dim, kernel)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.conv(y))))


class RepMixerBlock(nn.Module):
    """MobileCLIP-S0's convolutional block, on ``[B, L, D]`` viewed as ``[B, D, 1, L]``."""

    def __init__(self, dim: int, ffn_dim: int, kernel: int):
        super().__init__()
        self.layer_scale = nn.Parameter(torch.empty(dim, 1, 1))
        self.token_mixer = _TokenMixer(dim, kernel)
        self.convffn = _ConvFFN(dim, ffn_dim, kernel)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor | None = None) -> torch.Tensor:
        del key_bias  # convolutions run over every position under both semantics
        y = x.transpose(1, 2).unsqueeze(2)
        y = self.token_mixer(y)
        y = y + self.layer_scale * self.convffn(y)
        return y.squeeze(2).transpose(1, 2)


class _PositionTable(nn.Module):
    def __init__(self, rows: int, dim: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.empty(1, 1, rows, dim))


class _PositionalEmbedding(nn.Module):
    """Holds ``pos_embed.pos_embed`` [1, 1, C, D], the key layout of the checkpoints."""

    def __init__(self, rows: int, dim: int):
        super().__init__()
        self.pos_embed = _PositionTable(rows, dim)


class _MobileCLIPTextTransformer(nn.Module):
    def __init__(self, cfg: dict[str, Any], context_length: int):
        super().__init__()
        dim = cfg["dim"]
        self.embedding_layer = nn.Embedding(cfg["vocab_size"], dim)
        self.positional_embedding = _PositionalEmbedding(context_length, dim)
        blocks = []
        for kind in cfg["blocks"]:
            if kind == "transformer":
                blocks.append(TransformerBlock(dim, cfg["heads"], cfg["ffn_dim"]))
            elif kind == "repmixer":
                blocks.append(RepMixerBlock(dim, cfg["ffn_dim"], cfg["repmixer_kernel"]))
            else:
                raise ValueError(f"unknown block kind {kind!r} in encoder config")
        self.transformer = nn.ModuleList(blocks)
        self.final_layer_norm = LayerNormFP32(dim)
        self.projection_layer = nn.Parameter(torch.empty(dim, dim))

    def forward(self, input_ids: torch.Tensor, key_bias: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.embedding_layer(input_ids)
        # The model runs at exactly C tokens (checked by the caller): the whole table, a constant.
        x = tokens + self.positional_embedding.pos_embed.pos_embed[0, 0].to(tokens.dtype)
        for block in self.transformer:
            x = block(x, key_bias)
        return self.final_layer_norm(x)


class MobileCLIPTextEncoder(TextEncoder):
    """A SAM3-LiteText student at a fixed context length C (16 for the released checkpoints)."""

    unused_parameters = ("encoder.projection_layer",)

    def __init__(self, name: str, config: dict[str, Any], context_length: int):
        super().__init__(name, config, context_length)
        self.encoder = _MobileCLIPTextTransformer(config, context_length)
        self.projector = nn.Linear(config["dim"], config["output_dim"])
        #: how a longer checkpoint table was reduced to C rows ("slice", "interpolate"), or None
        self.position_table: str | None = None

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if input_ids.shape[-1] != self.context_length:
            raise ValueError(
                f"{self.name} runs at context length {self.context_length}, got ids of length "
                f"{input_ids.shape[-1]}: students are not prefix-invariant, pad to exactly C"
            )
        mask = self.padding_mask(input_ids)
        key_bias = None
        if self.padding.masks_attention:
            # a padding key's logit - 1e4 gives it weight exp(-1e4) = 0 exactly (float32 and float16), as
            # transformers' -inf does; a Cast and a Mul, which every target converts
            key_bias = mask[:, None, None, :].to(self.projector.weight.dtype) * KEY_MASK_BIAS
        return self.projector(self.encoder(input_ids, key_bias)), mask

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        rows = int(self.config["checkpoint_table_rows"])
        extra = (rows - self.context_length) * int(self.config["dim"])
        info["params_with_checkpoint_table"] = info["params"] + extra
        info["checkpoint_table_rows"] = rows
        info["position_table"] = self.position_table
        return info


# -- inference form -------------------------------------------------------------------------------
def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


class FusedRepMixerBlock(nn.Module):
    """A :class:`RepMixerBlock` with every BatchNorm and layer scale folded (inference only).

    Token mixer: one depthwise 1 x k convolution with bias,
    ``K = id_centre + g_tm * (K_skip + K_conv - K_norm)`` (spec §3.4); ConvFFN: its depthwise conv
    with the BN folded, then fc1/fc2 as Linear layers on ``[B, L, D]`` (so they export as MatMul,
    which INT8 quantizers and TensorRT handle best), with the block's layer scale folded into fc2.
    Equal to the unfused block up to float rounding.
    """

    def __init__(self, block: RepMixerBlock):
        super().__init__()
        tm, ffn = block.token_mixer, block.convffn
        conv = tm.mixer.rbr_conv[0]
        dim, _, _, kernel = conv.conv.weight.shape
        centre = kernel // 2
        with torch.no_grad():
            s_skip, b_skip = _bn_scale_shift(tm.mixer.rbr_skip)
            s_conv, b_conv = _bn_scale_shift(conv.bn)
            s_norm, b_norm = _bn_scale_shift(tm.norm.rbr_skip)
            g_tm = tm.layer_scale.reshape(dim)
            weight = conv.conv.weight * s_conv.reshape(dim, 1, 1, 1)
            weight[:, 0, 0, centre] += s_skip - s_norm
            weight = weight * g_tm.reshape(dim, 1, 1, 1)
            weight[:, 0, 0, centre] += 1.0
            self.mixer = nn.Conv2d(dim, dim, (1, kernel), padding=(0, centre), groups=dim, bias=True)
            self.mixer.weight.copy_(weight)
            self.mixer.bias.copy_(g_tm * (b_skip + b_conv - b_norm))

            s_ffn, b_ffn = _bn_scale_shift(ffn.conv.bn)
            self.ffn_conv = nn.Conv2d(dim, dim, (1, kernel), padding=(0, centre), groups=dim, bias=True)
            self.ffn_conv.weight.copy_(ffn.conv.conv.weight * s_ffn.reshape(dim, 1, 1, 1))
            self.ffn_conv.bias.copy_(b_ffn)
            hidden = ffn.fc1.weight.shape[0]
            g_blk = block.layer_scale.reshape(dim)
            self.fc1 = nn.Linear(dim, hidden)
            self.fc1.weight.copy_(ffn.fc1.weight.reshape(hidden, dim))
            self.fc1.bias.copy_(ffn.fc1.bias)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(hidden, dim)
            self.fc2.weight.copy_(ffn.fc2.weight.reshape(dim, hidden) * g_blk.reshape(dim, 1))
            self.fc2.bias.copy_(ffn.fc2.bias * g_blk)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor | None = None) -> torch.Tensor:
        del key_bias  # convolutions run over every position
        y = self.mixer(x.transpose(1, 2).unsqueeze(2))
        z = self.ffn_conv(y).squeeze(2).transpose(1, 2)
        return y.squeeze(2).transpose(1, 2) + self.fc2(self.act(self.fc1(z)))


def fuse_repmixer_blocks(model: MobileCLIPTextEncoder) -> MobileCLIPTextEncoder:
    """Replace every RepMixer block of ``model`` (in place) by its fused inference form."""
    blocks = model.encoder.transformer
    for i, block in enumerate(blocks):
        if isinstance(block, RepMixerBlock):
            blocks[i] = FusedRepMixerBlock(block)
    return model
