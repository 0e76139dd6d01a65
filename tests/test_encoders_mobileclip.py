"""MobileCLIP students: key layout and shapes from the spec, and the forward pass against an
independent float64 re-implementation of the spec's equations (shared/reference/encoders.md §3)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import randomize_

from edgeseg.encoders import build_encoder, get_config
from edgeseg.encoders.mobileclip import MobileCLIPTextEncoder
from edgeseg.tokenizer import get_tokenizer

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def spec_keys(dim: int, ffn: int, blocks: list[str], rows: int) -> dict[str, tuple[int, ...]]:
    """The text-encoder keys and shapes of a LiteText checkpoint, written from the spec's §4.2 tables."""
    keys = {
        "encoder.embedding_layer.weight": (49408, dim),
        "encoder.positional_embedding.pos_embed.pos_embed": (1, 1, rows, dim),
        "encoder.final_layer_norm.weight": (dim,), "encoder.final_layer_norm.bias": (dim,),
        "encoder.projection_layer": (dim, dim),
        "projector.weight": (256, dim), "projector.bias": (256,),
    }
    for i, kind in enumerate(blocks):
        p = f"encoder.transformer.{i}."
        if kind == "transformer":
            keys.update({
                p + "pre_norm_mha.0.weight": (dim,), p + "pre_norm_mha.0.bias": (dim,),
                p + "pre_norm_mha.1.qkv_proj.weight": (3 * dim, dim), p + "pre_norm_mha.1.qkv_proj.bias": (3 * dim,),
                p + "pre_norm_mha.1.out_proj.weight": (dim, dim), p + "pre_norm_mha.1.out_proj.bias": (dim,),
                p + "pre_norm_ffn.0.weight": (dim,), p + "pre_norm_ffn.0.bias": (dim,),
                p + "pre_norm_ffn.1.weight": (ffn, dim), p + "pre_norm_ffn.1.bias": (ffn,),
                p + "pre_norm_ffn.4.weight": (dim, ffn), p + "pre_norm_ffn.4.bias": (dim,),
            })
            continue
        keys[p + "layer_scale"] = (dim, 1, 1)
        keys[p + "token_mixer.layer_scale"] = (dim, 1, 1)
        for bn in ("token_mixer.norm.rbr_skip", "token_mixer.mixer.rbr_skip", "token_mixer.mixer.rbr_conv.0.bn",
                   "convffn.conv.bn"):
            for leaf in BN:
                keys[f"{p}{bn}.{leaf}"] = () if leaf == "num_batches_tracked" else (dim,)
        keys[p + "token_mixer.mixer.rbr_conv.0.conv.weight"] = (dim, 1, 1, 11)
        keys[p + "convffn.conv.conv.weight"] = (dim, 1, 1, 11)
        keys[p + "convffn.fc1.weight"] = (ffn, dim, 1, 1)
        keys[p + "convffn.fc1.bias"] = (ffn,)
        keys[p + "convffn.fc2.weight"] = (dim, ffn, 1, 1)
        keys[p + "convffn.fc2.bias"] = (dim,)
    return keys


S0_BLOCKS = ["repmixer"] + ["transformer"] * 4 + ["repmixer"]


@pytest.mark.parametrize("name,dim,ffn,blocks,tensors,params77", [
    ("mobileclip-s0", 512, 2048, S0_BLOCKS, 111, 42_572_544),
    ("mobileclip-s1", 512, 2048, ["transformer"] * 12, 151, 63_559_424),
    ("mobileclip2-l", 768, 3072, ["transformer"] * 12, 151, 123_847_168),
])
def test_full_size_layout_and_counts(name, dim, ffn, blocks, tensors, params77):
    model = build_encoder(name, context_length=77, device="meta")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == spec_keys(dim, ffn, blocks, 77)
    assert len(shapes) == tensors
    assert model.num_parameters() == params77
    at16 = build_encoder(name, device="meta")
    assert at16.context_length == 16
    assert at16.num_parameters() == params77 - 61 * dim
    assert at16.num_parameters(include_unused=False) == params77 - 61 * dim - dim * dim


# ---- independent float64 reference of the forward (spec §3.2, §3.4) ----------------------------
def _ln(x, w, b):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * w + b


def _gelu(x):
    return 0.5 * x * (1 + torch.special.erf(x / math.sqrt(2)))


def _bn(x, s, p):  # x [B, L, D], statistics per channel D
    return (x - s[p + ".running_mean"]) / torch.sqrt(s[p + ".running_var"] + 1e-5) * s[p + ".weight"] + s[p + ".bias"]


def _dw(x, w):  # depthwise 1 x 11 along L, zero padding 5: out[t, c] = sum_j w[c, j] x[t + j - 5, c]
    k = w.reshape(w.shape[0], -1)
    half = k.shape[1] // 2
    padded = torch.nn.functional.pad(x, (0, 0, half, half))
    length = x.shape[1]
    return sum(padded[:, j:j + length, :] * k[:, j] for j in range(k.shape[1]))


def reference_forward(s: dict[str, torch.Tensor], blocks: list[str], heads: int, ids: torch.Tensor):
    s = {k: v.double() for k, v in s.items()}
    length = ids.shape[1]
    x = s["encoder.embedding_layer.weight"][ids] + s["encoder.positional_embedding.pos_embed.pos_embed"][0, 0, :length]
    for i, kind in enumerate(blocks):
        p = f"encoder.transformer.{i}."
        if kind == "transformer":
            h = _ln(x, s[p + "pre_norm_mha.0.weight"], s[p + "pre_norm_mha.0.bias"])
            qkv = h @ s[p + "pre_norm_mha.1.qkv_proj.weight"].T + s[p + "pre_norm_mha.1.qkv_proj.bias"]
            dim = x.shape[-1]
            outs = []
            for head in range(heads):
                sl = slice(head * 64, head * 64 + 64)
                q, k, v = qkv[..., :dim][..., sl], qkv[..., dim:2 * dim][..., sl], qkv[..., 2 * dim:][..., sl]
                outs.append(torch.softmax((q * 0.125) @ k.transpose(1, 2), -1) @ v)  # no mask at all
            out_w, out_b = s[p + "pre_norm_mha.1.out_proj.weight"], s[p + "pre_norm_mha.1.out_proj.bias"]
            x = x + torch.cat(outs, -1) @ out_w.T + out_b
            h = _ln(x, s[p + "pre_norm_ffn.0.weight"], s[p + "pre_norm_ffn.0.bias"])
            h = _gelu(h @ s[p + "pre_norm_ffn.1.weight"].T + s[p + "pre_norm_ffn.1.bias"])
            x = x + h @ s[p + "pre_norm_ffn.4.weight"].T + s[p + "pre_norm_ffn.4.bias"]
        else:
            g_tm = s[p + "token_mixer.layer_scale"].flatten()
            conv = p + "token_mixer.mixer.rbr_conv.0"
            mixed = (_bn(x, s, p + "token_mixer.mixer.rbr_skip")
                     + _bn(_dw(x, s[conv + ".conv.weight"]), s, conv + ".bn")
                     - _bn(x, s, p + "token_mixer.norm.rbr_skip"))
            x = x + g_tm * mixed
            z = _bn(_dw(x, s[p + "convffn.conv.conv.weight"]), s, p + "convffn.conv.bn")
            z = _gelu(z @ s[p + "convffn.fc1.weight"].flatten(1).T + s[p + "convffn.fc1.bias"])
            z = z @ s[p + "convffn.fc2.weight"].flatten(1).T + s[p + "convffn.fc2.bias"]
            x = x + s[p + "layer_scale"].flatten() * z
    x = _ln(x, s["encoder.final_layer_norm.weight"], s["encoder.final_layer_norm.bias"])
    return x @ s["projector.weight"].T + s["projector.bias"], ids == 0


def tiny_student(blocks: list[str], context_length: int = 16, seed: int = 0) -> MobileCLIPTextEncoder:
    cfg = {**get_config("mobileclip-s0"), "dim": 128, "heads": 2, "ffn_dim": 256, "blocks": blocks}
    return randomize_(MobileCLIPTextEncoder("tiny", cfg, context_length).eval(), seed)


@pytest.fixture(scope="module")
def ids16() -> torch.Tensor:
    prompts = ["a dog", "the leftmost child wearing blue vest", "wow!$ sign", "", "a player in white " * 4]
    return torch.from_numpy(get_tokenizer()(prompts, 16).ids)


@pytest.mark.parametrize("blocks", [["repmixer", "transformer", "transformer", "repmixer"], ["transformer"] * 3])
def test_forward_matches_spec_equations(blocks, ids16):
    model = tiny_student(blocks)
    with torch.no_grad():
        memory, mask = model(ids16)
    expected, expected_mask = reference_forward(model.state_dict(), blocks, 2, ids16)
    assert memory.dtype == torch.float32 and memory.shape == (5, 16, 256)
    assert torch.equal(mask, expected_mask)
    assert (memory.double() - expected).abs().max().item() < 1e-4


def test_real_token_zero_is_masked_as_padding(ids16):
    model = tiny_student(S0_BLOCKS[:3])
    _, mask = model(ids16)
    row = ids16[2].tolist()
    zero_at = row.index(0)
    assert zero_at < row.index(49407), "the real '!' token 0 should come before EOT"
    assert mask[2, zero_at].item() is True


def test_padding_changes_valid_outputs_but_batch_composition_does_not(ids16):
    model = tiny_student(S0_BLOCKS[:4])
    with torch.no_grad():
        together, _ = model(ids16)
        alone, _ = model(ids16[:1])
        # The student is bidirectional and unmasked: at another context length (more padding) the
        # same prompt's valid tokens get different outputs (spec §3.2, "context dependence").
        longer_ids = torch.from_numpy(get_tokenizer()(["a dog"], 24).ids)
        longer, _ = _same_weights_at(model, 24)(longer_ids)
    assert torch.allclose(together[:1], alone, atol=1e-5)
    assert torch.equal(longer_ids[0, :16], ids16[0])
    assert (longer[0, :4] - together[0, :4]).abs().max().item() > 1e-3


def _same_weights_at(model: MobileCLIPTextEncoder, length: int) -> MobileCLIPTextEncoder:
    other = MobileCLIPTextEncoder("tiny", model.config, length).eval()
    state = dict(model.state_dict())
    table = state["encoder.positional_embedding.pos_embed.pos_embed"]
    state["encoder.positional_embedding.pos_embed.pos_embed"] = torch.cat(
        [table, table[:, :, : length - table.shape[2]]], dim=2)
    other.load_state_dict(state)
    return other


def test_wrong_context_length_is_refused(ids16):
    model = tiny_student(["transformer"])
    with pytest.raises(ValueError, match="context length 16"):
        model(ids16[:, :8])


def test_random_weights_are_seeded():
    a = build_encoder("mobileclip-s0", seed=1).state_dict()
    b = build_encoder("mobileclip-s0", seed=1).state_dict()
    c = build_encoder("mobileclip-s0", seed=2).state_dict()
    key = "encoder.transformer.1.pre_norm_mha.1.qkv_proj.weight"
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])
    assert all(torch.isfinite(v).all() for v in a.values() if v.is_floating_point())
