"""Checkpoint layouts, strict loading, position tables and safe reading."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from edgeseg.checkpoints import (
    IMAGE_MODEL_TEXT_PREFIX,
    SAM3_TEXT_PREFIX,
    STUDENT_TABLE_KEY,
    identify,
    load_encoder,
    read_checkpoint,
    reduce_position_table,
    save_encoder,
)
from edgeseg.encoders import build_encoder
from edgeseg.errors import EdgesegError

# Spec §3.3: for T = 77 -> C = 16, row i reads rows i0 and i0 + 1 with weights (1 - lam, lam).
SPEC_I0 = [1, 6, 11, 16, 21, 25, 30, 35, 40, 45, 50, 54, 59, 64, 69, 74]
SPEC_LAMBDA = [.90625, .71875, .53125, .34375, .15625, .96875, .78125, .59375, .40625, .21875, .03125,
               .84375, .65625, .46875, .28125, .09375]


@pytest.fixture(scope="module")
def s0_77() -> dict[str, torch.Tensor]:
    """A random S0 state dict with the released files' 77-row position table."""
    state = build_encoder("mobileclip-s0", context_length=77, seed=11).state_dict()
    gen = torch.Generator().manual_seed(0)
    state[STUDENT_TABLE_KEY] = torch.randn(state[STUDENT_TABLE_KEY].shape, generator=gen)
    return state


def _merged(state: dict[str, torch.Tensor]) -> dict:
    merged = {SAM3_TEXT_PREFIX + k: v for k, v in state.items()}
    merged["detector.backbone.vision_backbone.trunk.blocks.0.attn.qkv.weight"] = torch.zeros(3, 2)
    merged["tracker.sam_mask_decoder.iou_token.weight"] = torch.zeros(1, 4)
    return {"model": merged}


def test_interpolated_table_matches_spec_rows():
    table = torch.randn(1, 1, 77, 8, dtype=torch.float64)
    got = reduce_position_table(table, 16, "interpolate")[0, 0]
    for i, (i0, lam) in enumerate(zip(SPEC_I0, SPEC_LAMBDA)):
        expected = (1 - lam) * table[0, 0, i0] + lam * table[0, 0, i0 + 1]
        assert torch.allclose(got[i], expected, atol=1e-12), i
    assert torch.equal(reduce_position_table(table, 16, "slice")[0, 0], table[0, 0, :16])
    assert torch.equal(reduce_position_table(table[:, :, :16], 16, "interpolate"), table[:, :, :16])


def test_table_shorter_than_context_is_refused_by_slice_and_stretched_by_interpolate():
    with pytest.raises(EdgesegError, match="fewer than context length"):
        reduce_position_table(torch.zeros(1, 1, 8, 4), 16, "slice")
    table = torch.randn(1, 1, 8, 4, dtype=torch.float64)
    got = reduce_position_table(table, 16, "interpolate")[0, 0]
    # half-pixel centres, align_corners=False: output row i samples src (i + 0.5) * 8 / 16 - 0.5, clamped at 0
    for i in range(16):
        src = max(0.0, (i + 0.5) * 0.5 - 0.5)
        i0, lam = int(src), src - int(src)
        expected = (1 - lam) * table[0, 0, i0] + lam * table[0, 0, min(i0 + 1, 7)]
        assert torch.allclose(got[i], expected, atol=1e-12), i


@pytest.mark.parametrize("mode", ["interpolate", "slice"])
def test_litetext_merged_file_loads_with_either_table_mode(s0_77, tmp_path, mode):
    path = tmp_path / "sam3_litetext_mobileclip_s0_ctx16.pt"
    torch.save(_merged(s0_77), path)
    ckpt = read_checkpoint(path)
    assert (ckpt.layout, ckpt.container, ckpt.looks_like) == ("efficientsam3", "litetext-merged", "mobileclip-s0")
    model = load_encoder("mobileclip-s0", path, position_table=mode)
    assert model.context_length == 16 and model.position_table == mode
    loaded = model.state_dict()
    expected_table = reduce_position_table(s0_77[STUDENT_TABLE_KEY], 16, mode)
    assert torch.equal(loaded[STUDENT_TABLE_KEY], expected_table)
    for key, value in s0_77.items():
        if key != STUDENT_TABLE_KEY:
            assert torch.equal(loaded[key], value), key


def test_context_length_from_file_name(s0_77, tmp_path):
    path = tmp_path / "sam3_litetext_mobileclip_s0_ctx32.pt"
    torch.save(_merged(s0_77), path)
    assert load_encoder("mobileclip-s0", path).context_length == 32
    assert load_encoder("mobileclip-s0", path, context_length=16).context_length == 16


@pytest.mark.parametrize("prefix,suffix", [("", ".pt"), (IMAGE_MODEL_TEXT_PREFIX, ".pth"), ("", ".safetensors")])
def test_bare_text_state_dicts(s0_77, tmp_path, prefix, suffix):
    state = {prefix + k: v.contiguous() for k, v in s0_77.items()}
    path = tmp_path / f"text{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    ckpt = read_checkpoint(path)
    assert (ckpt.layout, ckpt.container) == ("efficientsam3", "text-state-dict")
    model = load_encoder("mobileclip-s0", path, position_table="slice")
    assert torch.equal(model.state_dict()[STUDENT_TABLE_KEY], s0_77[STUDENT_TABLE_KEY][:, :, :16])


def test_edgeseg_safetensors_round_trip(s0_77, tmp_path):
    merged = tmp_path / "m.pt"
    torch.save(_merged(s0_77), merged)
    model = load_encoder("mobileclip-s0", merged, position_table="slice")
    out = save_encoder(model, tmp_path / "student.safetensors")
    ckpt = read_checkpoint(out)
    assert ckpt.layout == "edgeseg" and ckpt.metadata["encoder"] == "mobileclip-s0"
    again = load_encoder("mobileclip-s0", out)
    assert again.position_table == "slice" and again.context_length == 16
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)
    with pytest.raises(EdgesegError, match="saved at context length 16"):
        load_encoder("mobileclip-s0", out, context_length=32)
    with pytest.raises(EdgesegError, match="edgeseg mobileclip-s0 checkpoint, not mobileclip-s1"):
        load_encoder("mobileclip-s1", out)


def test_half_precision_checkpoint_loads_as_float32(s0_77, tmp_path):
    path = tmp_path / "half.pt"
    torch.save({k: (v.half() if v.is_floating_point() else v) for k, v in s0_77.items()}, path)
    model = load_encoder("mobileclip-s0", path)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_missing_unexpected_and_misshaped_keys_are_named(s0_77, tmp_path):
    missing = dict(s0_77)
    del missing["projector.bias"]
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(EdgesegError, match=r"missing 1 key\(s\): projector.bias"):
        load_encoder("mobileclip-s0", tmp_path / "missing.pt")

    extra = dict(s0_77, **{"encoder.rogue": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(EdgesegError, match=r"unexpected 1 key\(s\): encoder.rogue"):
        load_encoder("mobileclip-s0", tmp_path / "extra.pt")

    shaped = dict(s0_77, **{"projector.weight": torch.zeros(128, 512)})
    torch.save(shaped, tmp_path / "shaped.pt")
    with pytest.raises(EdgesegError, match=r"projector.weight \(128, 512\) != \(256, 512\)"):
        load_encoder("mobileclip-s0", tmp_path / "shaped.pt")


def test_wrong_model_is_identified(tmp_path):
    s1 = build_encoder("mobileclip-s1", seed=0).state_dict()
    assert identify(s1) == "mobileclip-s1"
    torch.save({"model": {SAM3_TEXT_PREFIX + k: v for k, v in s1.items()}}, tmp_path / "s1.pt")
    with pytest.raises(EdgesegError, match="holds the mobileclip-s1 text encoder, not mobileclip-s0"):
        load_encoder("mobileclip-s0", tmp_path / "s1.pt")


def test_sam3_file_without_student_keys(tmp_path):
    teacher_like = {"model": {"detector.backbone.vision_backbone.x": torch.zeros(2), "tracker.y": torch.zeros(1)}}
    torch.save(teacher_like, tmp_path / "vision_only.pt")
    with pytest.raises(EdgesegError, match="holds no text encoder"):
        load_encoder("mobileclip-s0", tmp_path / "vision_only.pt")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_arbitrary_pickles_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"model": _Payload()}, fh)
    with pytest.raises(EdgesegError, match="not a plain state dict"):
        read_checkpoint(path)
    assert "must never run" not in capsys.readouterr().out


def test_truncated_and_non_dict_files(s0_77, tmp_path):
    path = tmp_path / "full.pt"
    torch.save(s0_77, path)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(EdgesegError, match="truncated or corrupt"):
        read_checkpoint(tmp_path / "cut.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(EdgesegError, match="not a state dict"):
        read_checkpoint(tmp_path / "list.pt")
    with pytest.raises(EdgesegError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pt")
