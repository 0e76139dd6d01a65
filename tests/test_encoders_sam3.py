"""SAM3 teacher: parity with Meta's VETextEncoder (the ``sam3`` package) on the same weights."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import HARD_PROMPTS, calibration_prompts, import_sam3

from edgeseg.checkpoints import SAM3_TEXT_PREFIX, load_encoder, read_checkpoint
from edgeseg.encoders import build_encoder, get_config
from edgeseg.encoders.sam3 import SAM3TextEncoder
from edgeseg.tokenizer import get_tokenizer

TINY = {"width": 64, "layers": 2, "heads": 4}


def _randomize(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                scale = 1 / math.sqrt(t.shape[-1]) if t.dim() >= 2 else 0.5
                t.copy_(torch.randn(t.shape, generator=gen) * scale)


def _meta_encoder(meta_tokenizer, **sizes):
    _, ve_text_encoder = import_sam3()
    return ve_text_encoder(d_model=256, tokenizer=meta_tokenizer, **sizes).eval()


def _meta_outputs(meta, prompts):
    with torch.no_grad():
        mask, memory, _ = meta(prompts, device="cpu")
    return memory.transpose(0, 1), mask  # Meta returns sequence-first memory


@pytest.mark.parity
def test_tiny_teacher_matches_meta(meta_tokenizer):
    meta = _meta_encoder(meta_tokenizer, **TINY)
    _randomize(meta, seed=0)
    ours = SAM3TextEncoder("sam3-tiny", {**get_config("sam3"), **TINY}, 32).eval()
    ours.load_state_dict(meta.state_dict(), strict=True)
    prompts = calibration_prompts()[::200] + HARD_PROMPTS
    expected, expected_mask = _meta_outputs(meta, prompts)
    ids = torch.from_numpy(get_tokenizer()(prompts, 32).ids)
    with torch.no_grad():
        memory, mask = ours(ids)
    assert memory.shape == (len(prompts), 32, 256) and memory.dtype == torch.float32
    assert torch.equal(mask, expected_mask)
    assert (memory - expected).abs().max().item() <= 1e-4


@pytest.mark.parity
def test_teacher_state_dict_layout_matches_meta(meta_tokenizer):
    _, ve_text_encoder = import_sam3()
    with torch.device("meta"):
        meta = ve_text_encoder(d_model=256, tokenizer=meta_tokenizer, width=1024, heads=16, layers=24)
    ours = build_encoder("sam3", device="meta")
    theirs = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == theirs
    assert len(theirs) == 295
    assert sum(p.numel() for p in meta.parameters()) == ours.num_parameters() == 353_724_672
    assert ours.num_parameters(include_unused=False) == 353_200_384


@pytest.mark.parity
@pytest.mark.slow
def test_full_size_official_checkpoint_matches_meta(meta_tokenizer, tmp_path):
    """Meta's full-size module with random weights, saved in sam3.pt's layout, loaded by edgeseg."""
    meta = _meta_encoder(meta_tokenizer, width=1024, heads=16, layers=24)
    _randomize(meta, seed=1)
    state = {SAM3_TEXT_PREFIX + k: v for k, v in meta.state_dict().items()}
    state["detector.backbone.vision_backbone.trunk.pos_embed"] = torch.zeros(3, 4)  # ignored
    state["tracker.maskmem_tpos_enc"] = torch.zeros(7, 1, 1, 64)  # ignored
    path = tmp_path / "sam3.pt"
    torch.save({"model": state}, path)
    del state
    assert (read_checkpoint(path).layout, read_checkpoint(path).container) == ("sam3", "sam3.pt")

    ours = load_encoder("sam3", path)
    prompts = calibration_prompts()[7::2500] + HARD_PROMPTS
    expected, expected_mask = _meta_outputs(meta, prompts)
    ids = torch.from_numpy(get_tokenizer()(prompts, 32).ids)
    with torch.no_grad():
        memory, mask = ours(ids)
    assert torch.equal(mask, expected_mask)
    assert (memory - expected).abs().max().item() <= 1e-4


def test_teacher_is_prefix_invariant():
    """Causal attention: at context 16 the outputs equal the first 16 positions at context 32."""
    model = SAM3TextEncoder("sam3-tiny", {**get_config("sam3"), **TINY}, 32).eval()
    _randomize(model, seed=3)
    prompts = ["a dog", "the leftmost child wearing blue vest", "red car"]
    tok = get_tokenizer()
    with torch.no_grad():
        full, _ = model(torch.from_numpy(tok(prompts, 32).ids))
        short, _ = model(torch.from_numpy(tok(prompts, 16).ids))
    assert torch.allclose(full[:, :16], short, atol=1e-6)


def test_teacher_padding_outputs_are_finite_and_masked():
    model = build_encoder("sam3", device="meta")
    assert model.context_length == 32
    tiny = SAM3TextEncoder("sam3-tiny", {**get_config("sam3"), **TINY}, 32).eval()
    _randomize(tiny, seed=4)
    ids = torch.from_numpy(get_tokenizer()(["a", "wow!$"], 32).ids)
    memory, mask = tiny(ids)
    assert torch.isfinite(memory).all()
    assert mask[0].tolist() == [False] * 3 + [True] * 29
    assert mask[1, 2].item() is True  # the real token 0 ("!" before "$") counts as padding
