"""transformers checkpoints: layout, strict loading, padding semantics, position tables, against
transformers 5.23 as the oracle (models built from their configs, random weights, ``save_pretrained``;
``get_text_features`` on transformers' own tokenization). Valid positions only, float32, CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hf_models import (
    FULL_TEXT,
    PROMPTS,
    TINY_TEACHER,
    clip_tokenizer,
    import_transformers,
    make_model,
    max_valid_diff,
    save,
    text_features,
    tiny_student_text,
    tokenize,
)

from edgeseg.checkpoints import build_from_checkpoint, load_encoder, read_checkpoint
from edgeseg.checkpoints import hf as hf_layout
from edgeseg.encoders import build_encoder
from edgeseg.errors import EdgesegError
from edgeseg.export import export_bundle
from edgeseg.runtime import load as load_bundle
from edgeseg.tokenizer import get_tokenizer

pytestmark = pytest.mark.parity
TOL = 1e-4

CASES = {  # name: (text config, teacher?)
    "s0-77rows": (tiny_student_text(77, True), False),
    "s0-16rows": (tiny_student_text(16, True), False),
    "s1-77rows": (tiny_student_text(77, False, layers=3), False),
    "teacher": (TINY_TEACHER, True),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (transformers model, its save_pretrained folder)."""
    import_transformers()
    out = {}
    for i, (name, (text, teacher)) in enumerate(CASES.items()):
        model = make_model(text, teacher, seed=i)
        out[name] = (model, save(model, tmp_path_factory.mktemp(name) / "ckpt"))
    return out


def ours_at(folder, length, semantics=None):
    return build_from_checkpoint(read_checkpoint(folder), context_length=length, semantics=semantics)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("length", [8, 16, 32])
def test_torch_encoder_matches_get_text_features(saved, name, length):
    model, folder = saved[name]
    ours = ours_at(folder, length)
    assert ours.padding.semantics == "transformers" and ours.pad_id == 49407  # read from the tokenizer files
    ids, attention = tokenize(PROMPTS, length)
    ours_ids = get_tokenizer()(PROMPTS, length, ours.pad_id).ids
    np.testing.assert_array_equal(ours_ids, ids)  # edgeseg's tokenizer pads as transformers' does
    with torch.no_grad():
        memory, mask = ours(torch.from_numpy(ids))
    np.testing.assert_array_equal(mask.numpy(), attention == 0)  # in-model mask = transformers' attention mask
    assert max_valid_diff(memory.numpy(), text_features(model, ids, attention), attention) <= TOL


def test_the_semantics_matter_for_students_not_for_the_teacher(saved):
    """Same weights, efficientsam3 semantics (pad 0, students attend to padding): the students' valid
    outputs move, the causal teacher's do not. The README cites this test."""
    ids, attention = tokenize(PROMPTS, 16)
    for name, (model, folder) in saved.items():
        ours = ours_at(folder, 16, "efficientsam3")
        assert ours.pad_id == 0
        with torch.no_grad():
            memory, mask = ours(torch.from_numpy(get_tokenizer()(PROMPTS, 16).ids))
        diff = max_valid_diff(memory.numpy(), text_features(model, ids, attention), attention)
        if name == "teacher":
            assert diff <= 1e-5, diff
        else:
            assert diff > 1e-2, (name, diff)


def test_pad_id_alone_changes_s0_but_not_s1(saved):
    """transformers masks padding in attention but not in S0's RepMixer convolutions."""
    for name, moved in (("s0-77rows", True), ("s1-77rows", False)):
        model, _ = saved[name]
        ids, attention = tokenize(PROMPTS, 16)
        other = np.where(attention == 0, 0, ids)  # padded with 0 instead of 49407, same attention mask
        diff = max_valid_diff(text_features(model, other, attention), text_features(model, ids, attention), attention)
        assert (diff > 1e-3) == moved, (name, diff)


def test_exported_bundle_matches_get_text_features(saved, tmp_path):
    for name in ("s0-77rows", "teacher"):
        model, folder = saved[name]
        ours = ours_at(folder, 16)
        manifest = export_bundle(ours, tmp_path / name, PROMPTS[:4], {"checkpoint": "test"})
        assert manifest["semantics"] == "transformers" and manifest["tokenizer"]["pad_id"] == 49407
        with load_bundle(tmp_path / name) as runner:
            out = runner.encode(PROMPTS)
        ids, attention = tokenize(PROMPTS, 16)
        np.testing.assert_array_equal(out.input_ids, ids)
        np.testing.assert_array_equal(out.mask, attention == 0)
        assert max_valid_diff(out.memory, text_features(model, ids, attention), attention) <= TOL


def test_layout_metadata_and_info(saved):
    ckpt = read_checkpoint(saved["s0-77rows"][1])
    assert (ckpt.layout, ckpt.container, ckpt.metadata["pad_id"]) == ("transformers", "safetensors", 49407)
    assert ckpt.metadata["encoder"] is None  # a tiny config matches no registered encoder
    assert ckpt.state["encoder.positional_embedding.pos_embed.pos_embed"].shape == (1, 1, 77, 64)
    model_file = saved["s0-77rows"][1] / "model.safetensors"  # the .safetensors file with config.json beside it
    assert read_checkpoint(model_file).layout == "transformers"


def test_pad_id_comes_from_the_tokenizer_files(tmp_path, saved):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).symlink_to(saved["s1-77rows"][1] / name)
    assert read_checkpoint(folder).metadata["pad_id"] is None and ours_at(folder, 16).pad_id == 49407  # default
    clip_tokenizer(pad_token="!").save_pretrained(str(folder))  # Stable Diffusion 2's CLIP pads with "!" (id 0)
    ours = ours_at(folder, 16)
    assert ours.pad_id == 0 and ours.padding.semantics == "transformers"
    mask = ours(torch.from_numpy(get_tokenizer()(["wow!$ sign"], 16, 0).ids))[1]
    assert mask[0].tolist() == [False] * 6 + [True] * 10  # after the first EOT; the real token 0 stays valid


def test_full_size_keys_and_shapes_match_on_the_meta_device():
    transformers = import_transformers()
    for name, text in FULL_TEXT.items():
        teacher = name == "sam3"
        with torch.device("meta"):
            cfg = (transformers.Sam3Config if teacher else transformers.Sam3LiteTextConfig)(text_config=text)
            model = (transformers.Sam3Model if teacher else transformers.Sam3LiteTextModel)(cfg)
        theirs = {k: v for k, v in model.state_dict().items() if k.startswith(hf_layout.TEXT_ROOTS)}
        mapped, unknown, incomplete = hf_layout.to_edgeseg(theirs, "sam3" if teacher else "mobileclip")
        assert not unknown and not incomplete
        rows = 32 if teacher else 77
        ours = build_encoder(name, None if teacher else rows, device="meta").state_dict()
        assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in ours.items()}
        assert sum(v.numel() for v in theirs.values()) == sum(v.numel() for v in ours.values())
        config = json.loads(cfg.to_json_string())
        own = hf_layout.edgeseg_config(config["model_type"], hf_layout.text_config(config, None)[1], config, None)
        assert hf_layout.variant(own) == name


def test_wrong_encoder_and_other_models_are_refused(saved, tmp_path):
    with pytest.raises(EdgesegError, match=r"holds a LiteText text encoder of width 64.*which no edgeseg encoder "
                                           r"matches.*not mobileclip-s0"):
        load_encoder("mobileclip-s0", saved["s0-77rows"][1])
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "model.safetensors").symlink_to(saved["teacher"][1] / "model.safetensors")
    with pytest.raises(EdgesegError, match="config of a bert model, not SAM3"):
        read_checkpoint(folder)


def test_a_pruned_vocabulary_keeps_the_in_graph_mask(saved, tmp_path):
    """Pruning renumbers EOT (= the transformers pad id): the graph's EOT constant and the pad id follow."""
    import onnx
    from conftest import calibration_prompts

    from edgeseg.quantize import Gate, quantize_bundle

    ours = ours_at(saved["s0-77rows"][1], 16)
    export_bundle(ours, tmp_path / "fp32", PROMPTS, {"checkpoint": "test"})
    corpus = calibration_prompts()
    manifest = quantize_bundle(tmp_path / "fp32", tmp_path / "pruned", corpus[::800][:48], corpus[5::900][:48],
                               gate=Gate(0.0, 0.0), prune_prompts=[*PROMPTS, *corpus[::50]], prune_name="test")
    tok = manifest["tokenizer"]
    assert tok["eot_id"] < 49407 and tok["pad_id"] == tok["eot_id"] and manifest["semantics"] == "transformers"
    graph = onnx.load(str(tmp_path / "pruned" / "model.onnx"), load_external_data=False).graph
    compared = [n for n in graph.node if n.op_type == "Equal" and "input_ids" in n.input]
    assert len(compared) == 1
    with load_bundle(tmp_path / "fp32") as full, load_bundle(tmp_path / "pruned") as pruned:
        a, b = full.encode(PROMPTS), pruned.encode(PROMPTS)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert (b.input_ids[b.mask] == tok["pad_id"]).all()


def test_core_ml_program_reproduces_the_transformers_semantics(saved, tmp_path):
    """The Core ML program computes the "after the first EOT" mask and the masked attention itself: its MIL
    program (evaluated in float32) matches torch, mask included; the manifest records the padding."""
    pytest.importorskip("coremltools")
    from edgeseg.targets.coreml import coreml_bundle

    ours = ours_at(saved["s0-77rows"][1], 16)
    manifest, _ = coreml_bundle(ours, tmp_path / "coreml", "fp32", 2, PROMPTS, {"checkpoint": "test"})
    assert manifest["semantics"] == "transformers" and manifest["tokenizer"]["pad_id"] == 49407
    assert manifest["coreml"]["ops"].get("cumsum") == 1
    assert manifest["fidelity"]["mil_emulation"]["worst_cosine"] >= 0.99999


def test_distill_trains_a_student_with_transformers_semantics(tmp_path):
    """``edgeseg distill --semantics transformers``: the student trains on ids padded with 49407 and its
    student.safetensors records the semantics, so splice --to transformers keeps its function."""
    from test_distill import _lines, run_cli, tiny_args

    (tmp_path / "train.txt").write_text("\n".join(_lines("distill", 48)) + "\n", encoding="utf-8")
    (tmp_path / "eval.txt").write_text("\n".join(_lines("eval", 12)) + "\n", encoding="utf-8")
    corpus = {"train": tmp_path / "train.txt", "eval": tmp_path / "eval.txt"}
    proc = run_cli(tiny_args(corpus, tmp_path / "run", "--semantics", "transformers", steps=4))
    assert proc.returncode == 0, proc.stderr
    ckpt = read_checkpoint(tmp_path / "run" / "student.safetensors")
    assert (ckpt.metadata["semantics"], ckpt.metadata["pad_id"]) == ("transformers", "49407")
