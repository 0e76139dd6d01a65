"""The teacher exported with a dynamic sequence axis (``edgeseg export --dynamic-length``).

Oracle: the torch teacher itself at its full context length 32 (SAM3's fixed-32 run). The teacher is
causal, so its valid positions must not depend on the padding after a prompt: the ONNX graph run at
each prompt's own length must reproduce the full-length torch outputs there.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_encoders_mobileclip import S0_BLOCKS, tiny_student
from test_export import tiny_teacher

from edgeseg.errors import EdgesegError
from edgeseg.export import export_bundle, own_length
from edgeseg.runtime import load
from edgeseg.tokenizer import get_tokenizer

PROMPTS = ["a dog", "wow!$ sign", "the leftmost child wearing blue vest", "a player in white", "",
           "caf\u00e9 au lait " * 9]
SOURCE = {"checkpoint": None, "checkpoint_sha256": "random", "seed": 0}


@pytest.fixture(scope="module")
def dynamic_bundle(tmp_path_factory):
    teacher = tiny_teacher(seed=1)
    out = tmp_path_factory.mktemp("dyn") / "bundle"
    manifest = export_bundle(teacher, out, PROMPTS, dict(SOURCE), dynamic_length=True)
    return teacher, out, manifest


def test_own_length_by_hand():
    ids = np.array([[49406, 320, 49407, 0, 0], [49406, 1, 2, 49407, 0]])
    assert own_length(ids) == 4 and own_length(ids[:1]) == 3 and own_length(np.zeros((1, 4), int)) == 1


def test_graph_takes_any_length_and_matches_torch_at_32_on_valid_positions(dynamic_bundle):
    teacher, out, manifest = dynamic_bundle
    full = get_tokenizer()(PROMPTS, 32).ids
    with torch.no_grad():
        ref_memory, ref_mask = teacher(torch.from_numpy(full))
    session = ort.InferenceSession(str(out / manifest["model"]), providers=["CPUExecutionProvider"])
    for row in range(len(PROMPTS)):
        n = own_length(full[row:row + 1])
        memory, mask = session.run(["memory", "mask"], {"input_ids": full[row:row + 1, :n]})
        valid = ~ref_mask[row, :n].numpy()
        assert memory.shape == (1, n, 256) and np.array_equal(mask[0], ~valid)
        np.testing.assert_allclose(memory[0][valid], ref_memory[row, :n].numpy()[valid], atol=1e-4, rtol=0)
    check = manifest["dynamic_length"]["check"]
    assert manifest["dynamic_length"]["max"] == 32 and check["prompts"] == len(PROMPTS)
    assert check["max_abs_diff_valid_positions"] <= 1e-4


def test_runner_accepts_short_ids_only_for_dynamic_bundles(dynamic_bundle, tmp_path):
    teacher, out, _ = dynamic_bundle
    ids = get_tokenizer()(["a dog"], 32).ids
    with load(out) as runner:
        memory, mask = runner.infer(ids[:, :4])
        assert memory.shape == (1, 4, 256) and not mask.any()
        with pytest.raises(EdgesegError, match=r"1\.\.32"):
            runner.infer(ids[:, :0])
    fixed = tmp_path / "fixed"
    export_bundle(teacher, fixed, PROMPTS[:2], dict(SOURCE))
    with load(fixed) as runner, pytest.raises(EdgesegError, match=r"\[batch, 32\]"):
        runner.infer(ids[:, :4])


def test_a_bidirectional_student_is_refused(tmp_path):
    with pytest.raises(EdgesegError, match="causal"):
        export_bundle(tiny_student(S0_BLOCKS, seed=0), tmp_path / "b", PROMPTS[:2], dict(SOURCE), dynamic_length=True)
    assert not (tmp_path / "b").exists()


def test_cli_refuses_dynamic_length_for_a_student_before_loading(tmp_path, capsys):
    from edgeseg.cli import main

    rc = main(["export", "--encoder", "mobileclip-s0", "--dynamic-length", "--out", str(tmp_path / "b")])
    assert rc == 2 and "causal" in capsys.readouterr().err


def test_dynamic_int8_of_the_dynamic_length_teacher_keeps_the_axis(dynamic_bundle, tmp_path):
    from conftest import calibration_prompts

    from edgeseg.quantize import Gate, quantize_bundle

    _, out, _ = dynamic_bundle
    manifest = quantize_bundle(out, tmp_path / "int8", [], calibration_prompts()[::900][:16], mode="dynamic",
                               gate=Gate(0.0, 0.0))
    assert manifest["dynamic_length"]["max"] == 32
    ids = get_tokenizer()(["a player in white"], 32).ids
    with load(tmp_path / "int8") as runner, load(out) as fp32:
        short, mask = runner.infer(ids[:, :6])
        ref, _ = fp32.infer(ids[:, :6])
    assert short.shape == (1, 6, 256) and not mask.any()
    cos = (short * ref).sum(-1) / (np.linalg.norm(short, axis=-1) * np.linalg.norm(ref, axis=-1))
    assert cos.min() > 0.9
