"""ONNX export (``edgeseg.export``, ``edgeseg export``): RepMixer fusion, the graph contract, ORT vs torch,
and the FP32 bundle with its manifest.

Oracles are independent of the exporter: the torch models themselves (unfused), the ONNX graph read
back with ``onnx``, outputs computed with our own ONNX Runtime session, hashes from ``hashlib``, and
the contract of issue 4 written out by hand. Tiny models keep this fast; the full-size
``mobileclip-s0`` is exported once through the CLI (:func:`cli_exported_s0`, shared with
``test_runtime.py``).
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import gzip
import hashlib
import json
import math
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import HARD_PROMPTS, PROMPT_SETS, run_cli
from onnx import numpy_helper
from test_encoders_mobileclip import S0_BLOCKS, tiny_student

import edgeseg.export
from edgeseg.bundle import verify_bundle
from edgeseg.cli import main
from edgeseg.encoders import build_encoder, get_config
from edgeseg.encoders.mobileclip import FusedRepMixerBlock, RepMixerBlock, fuse_repmixer_blocks
from edgeseg.encoders.sam3 import SAM3TextEncoder
from edgeseg.errors import EdgesegError
from edgeseg.export import export_bundle, export_onnx, inference_copy
from edgeseg.tokenizer import default_vocab_path, get_tokenizer

# "wow!$ sign" holds the real token 0 ("!" before "$") inside the prompt: the mask must flag it too.
PROMPTS = ["wow!$ sign", "a dog", "", "the leftmost child wearing blue vest", "a player in white " * 6,
           HARD_PROMPTS[0], HARD_PROMPTS[9], "caf\u00e9 au lait"]
REF_PROMPTS = ["a dog", "wow!$ sign", "the leftmost child wearing blue vest", HARD_PROMPTS[7], ""]
SOURCE = {"checkpoint": None, "checkpoint_sha256": "random", "seed": 0}
TOL = 1e-4


def tiny_teacher(seed: int = 0) -> SAM3TextEncoder:
    """A 2-layer, 64-wide SAM3 teacher with every float tensor random (LayerNorms included)."""
    model = SAM3TextEncoder("sam3-tiny", {**get_config("sam3"), "width": 64, "layers": 2, "heads": 4}, 32).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                scale = 1 / math.sqrt(tensor.shape[-1]) if tensor.dim() >= 2 else 0.5
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * scale)
    return model


def torch_outputs(model, prompts):
    ids = get_tokenizer()(list(prompts), model.context_length).ids
    with torch.no_grad():
        memory, mask = model(torch.from_numpy(ids))
    return ids, memory.numpy(), mask.numpy()


def ort_outputs(path, ids):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    memory, mask = session.run(["memory", "mask"], {"input_ids": ids})
    return memory, mask


def graph_tensors(model: onnx.ModelProto) -> list[np.ndarray]:
    """Every constant array in the graph: initializers and Constant nodes' values."""
    arrays = [numpy_helper.to_array(t) for t in model.graph.initializer]
    for node in model.graph.node:
        if node.op_type == "Constant":
            arrays += [numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"]
    return arrays


def holds(arrays: list[np.ndarray], weight: np.ndarray) -> bool:
    """Whether ``weight`` (or its transpose, as MatMul stores Linear weights) is one of ``arrays``."""
    candidates = [weight, weight.T] if weight.ndim == 2 else [weight]
    return any(a.size == weight.size and any(a.shape == c.shape and np.array_equal(a, c) for c in candidates)
               for a in arrays)


def dims(value_info) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def temp_siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.tmp"))


# ---- built once per session, shared with test_runtime.py ----------------------------------------------
_S0: dict[str, tuple[int, str, Path]] = {}
_TINY: dict[str, tuple] = {}


@functools.cache
def s0_torch_model():
    """The full-size ``mobileclip-s0`` with seed-0 random weights (what ``edgeseg export`` builds)."""
    return build_encoder("mobileclip-s0", seed=0)


def tiny_exported_bundle(tmp_path_factory) -> tuple:
    """``export_bundle`` of ``tiny_student(S0_BLOCKS)`` on REF_PROMPTS: (student, DIR, manifest). Do not modify."""
    if "tiny" not in _TINY:
        student = tiny_student(S0_BLOCKS, seed=0)
        out = tmp_path_factory.mktemp("tiny-bundle") / "bundle"
        _TINY["tiny"] = (student, out, export_bundle(student, out, REF_PROMPTS, dict(SOURCE)))
    return _TINY["tiny"]


def cli_exported_s0(tmp_path_factory) -> tuple[int, str, Path]:
    """``edgeseg export --encoder mobileclip-s0 --out DIR`` once per session: (exit code, stderr, DIR)."""
    if "s0" not in _S0:
        out = tmp_path_factory.mktemp("s0-export") / "bundle"
        _S0["s0"] = (*run_cli(["export", "--encoder", "mobileclip-s0", "--out", str(out)]), out)
    return _S0["s0"]


# ---- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def student():
    return tiny_student(S0_BLOCKS, seed=0)  # the same weights as tiny_exported_bundle's (seeded)


@pytest.fixture(scope="module")
def teacher():
    return tiny_teacher(seed=0)


@pytest.fixture(scope="module")
def exported(student, teacher, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    return {
        "student": (student, export_onnx(student, folder / "student.onnx")),
        "teacher": (teacher, export_onnx(teacher, folder / "teacher.onnx")),
    }


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    _, out, manifest = tiny_exported_bundle(tmp_path_factory)
    return out, manifest


# ---- RepMixer reparameterization -------------------------------------------------------------------
@pytest.mark.parametrize("length", [16, 5, 40])  # 5 < kernel 11: the zero padding matters everywhere
def test_fused_repmixer_block_equals_the_unfused_block(student, length):
    blocks = [b for b in student.encoder.transformer if isinstance(b, RepMixerBlock)]
    assert len(blocks) == 2
    bn = blocks[0].token_mixer.mixer.rbr_skip
    assert bn.running_mean.abs().max() > 0.1 and (bn.running_var - 1).abs().max() > 0.1  # non-trivial stats
    x = torch.randn(4, length, 128, generator=torch.Generator().manual_seed(length))
    for block in blocks:
        fused = FusedRepMixerBlock(block).eval()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        with torch.no_grad():
            expected, got = block(x), fused(x)
        assert (expected - x).abs().max() > 0.1  # the block does change its input
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= 1e-5


def test_fusing_the_whole_model_keeps_its_outputs_and_leaves_the_original_alone(student):
    ids = torch.from_numpy(get_tokenizer()(PROMPTS, 16).ids)
    fused = fuse_repmixer_blocks(copy.deepcopy(student))
    assert [type(b).__name__ for b in fused.encoder.transformer] == [
        "FusedRepMixerBlock", *["TransformerBlock"] * 4, "FusedRepMixerBlock"]
    clone = inference_copy(student)
    assert sum(isinstance(b, FusedRepMixerBlock) for b in clone.encoder.transformer) == 2
    assert sum(isinstance(b, RepMixerBlock) for b in student.encoder.transformer) == 2  # original untouched
    with torch.no_grad():
        expected, expected_mask = student(ids)
        for model in (fused, clone):
            memory, mask = model(ids)
            assert torch.equal(mask, expected_mask)
            assert (memory - expected).abs().max().item() <= 1e-5


# ---- the ONNX graph -------------------------------------------------------------------------------
@pytest.mark.parametrize("which,length", [("student", 16), ("teacher", 32)])
def test_graph_contract(exported, which, length):
    _, path = exported[which]
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    opsets = {o.domain: o.version for o in model.opset_import if o.domain in ("", "ai.onnx")}
    assert opsets and min(opsets.values()) >= 17
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    assert [i.name for i in inputs] == ["input_ids"]
    assert [o.name for o in model.graph.output] == ["memory", "mask"]
    elem = {v.name: v.type.tensor_type.elem_type for v in [*inputs, *model.graph.output]}
    assert elem == {"input_ids": onnx.TensorProto.INT64, "memory": onnx.TensorProto.FLOAT,
                    "mask": onnx.TensorProto.BOOL}
    input_dims, memory_dims, mask_dims = dims(inputs[0]), dims(model.graph.output[0]), dims(model.graph.output[1])
    for shape in (input_dims, memory_dims, mask_dims):
        assert isinstance(shape[0], str) and shape[0]  # dynamic batch: a dim_param
    assert input_dims[1:] == [length]
    assert mask_dims[1:] == [length]
    assert len(memory_dims) == 3 and memory_dims[2] == 256
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops
    if which == "student":
        # Two fused RepMixer blocks: one depthwise conv each for the token mixer and the ConvFFN;
        # fc1/fc2 are MatMuls (FusedRepMixerBlock's design). Unfused there would be 8 Convs.
        assert ops.count("Conv") == 4


@pytest.mark.parametrize("which,length", [("student", 16), ("teacher", 32)])
def test_memory_output_has_a_fixed_context_length(exported, which, length):
    model = onnx.load(str(exported[which][1]))
    assert dims(model.graph.output[0])[1:] == [length, 256]


def test_dead_weights_are_not_in_the_graph(exported):
    student, path = exported["student"]
    arrays = graph_tensors(onnx.load(str(path)))
    assert not holds(arrays, student.encoder.projection_layer.detach().numpy())
    # Positive control: a live [D, D] weight of the same shape is found (stored transposed for MatMul).
    assert holds(arrays, student.encoder.transformer[1].pre_norm_mha[1].out_proj.weight.detach().numpy())
    assert holds(arrays, student.projector.weight.detach().numpy())

    teacher, path = exported["teacher"]
    arrays = graph_tensors(onnx.load(str(path)))
    dead = teacher.encoder.text_projection.detach().numpy()
    assert dead.shape == (64, 512)
    assert not holds(arrays, dead)
    assert not any(512 in a.shape for a in arrays)
    assert holds(arrays, teacher.resizer.weight.detach().numpy())


@pytest.mark.parametrize("which", ["student", "teacher"])
@pytest.mark.parametrize("batch", [1, 3, 7])
def test_onnx_runtime_matches_torch(exported, which, batch):
    model, path = exported[which]
    ids, expected, expected_mask = torch_outputs(model, PROMPTS[:batch])
    assert ids[0].tolist().index(0) < ids[0].tolist().index(49407)  # a real token 0 before EOT
    memory, mask = ort_outputs(path, ids)
    assert memory.dtype == np.float32 and memory.shape == (batch, model.context_length, 256)
    assert mask.dtype == np.bool_ and mask.shape == (batch, model.context_length)
    assert np.array_equal(mask, ids == 0)
    assert np.array_equal(mask, expected_mask)
    assert float(np.abs(memory - expected).max()) <= TOL


def test_opset_below_17_is_refused(student, tmp_path):
    with pytest.raises(EdgesegError, match="opset"):
        export_onnx(student, tmp_path / "m.onnx", opset=16)
    assert not (tmp_path / "m.onnx").exists()


# ---- export_bundle ---------------------------------------------------------------------------------
def test_bundle_manifest_fields(tiny_bundle, student):
    out, manifest = tiny_bundle
    on_disk = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert on_disk == manifest
    assert manifest["format"] == "edgeseg-bundle" and manifest["format_version"] == 1
    assert manifest["encoder"] == "tiny" and manifest["context_length"] == 16
    assert manifest["precision"] == "fp32" and manifest["target"] == "onnx"
    assert manifest["backend"] == "onnxruntime" and manifest["model"] == "model.onnx"
    assert manifest["inputs"] == [{"name": "input_ids", "dtype": "int64", "shape": ["batch", 16]}]
    assert manifest["outputs"] == [{"name": "memory", "dtype": "float32", "shape": ["batch", 16, 256]},
                                   {"name": "mask", "dtype": "bool", "shape": ["batch", 16]}]
    tok = manifest["tokenizer"]
    assert (tok["sot_id"], tok["eot_id"], tok["pad_id"], tok["vocab_size"]) == (49406, 49407, 0, 49408)
    assert tok["source_vocab_md5"] == "933b7abbbbde62c36f02f0e6ccde464f" == hashlib.md5(
        default_vocab_path().read_bytes()).hexdigest()
    assert hashlib.md5((out / tok["vocab"]).read_bytes()).hexdigest() == tok["vocab_md5"]
    # the bundle ships exactly the merges SAM3's tokenizer reads: the first 48,894 of CLIP's file
    shipped = gzip.open(out / tok["vocab"], "rt", encoding="utf-8").read().split("\n")
    original = gzip.open(default_vocab_path(), "rt", encoding="utf-8").read().split("\n")
    assert tok["num_merges"] == 48894 and shipped[1:-1] == original[1:48895] and shipped[-1] == ""
    assert (out / tok["vocab"]).stat().st_size < 0.5 * default_vocab_path().stat().st_size
    assert manifest["source"] == SOURCE
    assert manifest["calibration"] is None
    assert "fidelity" in manifest
    assert manifest["excluded_layers"] == []
    assert manifest["export"]["opset"] == 17 and manifest["export"]["tolerance"] == TOL
    assert manifest["export"]["repmixer_fused"] is True
    assert manifest["reference"]["file"] == "reference.npz"
    assert manifest["reference"]["prompts"] == len(REF_PROMPTS)
    assert manifest["params"] == sum(p.numel() for p in student.parameters()) - 128 * 128  # no projection_layer
    for tool in ("torch", "onnx", "onnxruntime", "numpy"):
        assert manifest["tools"][tool] == metadata.version(tool)
    created = dt.datetime.fromisoformat(manifest["created"])
    assert created.tzinfo is not None and abs((dt.datetime.now(dt.timezone.utc) - created).total_seconds()) < 600
    graph = onnx.load(str(out / "model.onnx"))
    assert {o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")} == {manifest["export"]["opset"]}
    assert "BatchNormalization" not in {n.op_type for n in graph.graph.node}


def test_bundle_files_are_listed_with_their_sha256(tiny_bundle):
    out, manifest = tiny_bundle
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk == {"model.onnx", "model.onnx.data", manifest["tokenizer"]["vocab"],
                                                 "reference.npz"}
    assert manifest["model_data"] == "model.onnx.data"
    for name, entry in manifest["files"].items():
        data = (out / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert verify_bundle(out) == manifest
    assert temp_siblings(out) == []


def test_bundle_max_abs_diff_is_measured(tiny_bundle, student):
    out, manifest = tiny_bundle
    ids, expected, _ = torch_outputs(student, REF_PROMPTS)
    memory, _ = ort_outputs(out / "model.onnx", ids)
    mine = float(np.abs(memory - expected).max())
    recorded = manifest["export"]["max_abs_diff"]
    assert 0 <= recorded <= TOL
    assert abs(recorded - mine) <= 1e-6
    assert manifest["export"]["mean_cosine"] >= 0.999999


def test_bundle_reference_holds_torch_outputs(tiny_bundle, student):
    out, _ = tiny_bundle
    ids, expected, expected_mask = torch_outputs(student, REF_PROMPTS)
    with np.load(out / "reference.npz", allow_pickle=False) as ref:
        assert ref["prompts"].tolist() == REF_PROMPTS
        assert ref["input_ids"].dtype == np.int64 and np.array_equal(ref["input_ids"], ids)
        assert ref["mask"].dtype == np.bool_ and np.array_equal(ref["mask"], expected_mask)
        assert ref["memory"].dtype == np.float32 and ref["memory"].shape == (len(REF_PROMPTS), 16, 256)
        valid = ~expected_mask
        assert float(np.abs(ref["memory"][valid] - expected[valid]).max()) <= 1e-6
        assert not ref["memory"][expected_mask].any()  # padding rows stored as zeros
        assert json.loads((out / "manifest.json").read_text())["reference"]["padding_rows"] == "zeros"


def test_bundle_of_the_teacher(teacher, tmp_path):
    out = tmp_path / "teacher"
    manifest = export_bundle(teacher, out, REF_PROMPTS[:3], dict(SOURCE))
    assert manifest["context_length"] == 32
    assert manifest["inputs"][0]["shape"] == ["batch", 32]
    assert manifest["export"]["max_abs_diff"] <= TOL
    ids, expected, _ = torch_outputs(teacher, REF_PROMPTS[:3])
    memory, mask = ort_outputs(out / "model.onnx", ids)
    assert np.array_equal(mask, ids == 0) and float(np.abs(memory - expected).max()) <= TOL
    verify_bundle(out)


# ---- failing verification leaves nothing -------------------------------------------------------------
def _perturbed_run_onnx(delta: float = 0.0, flip_mask: bool = False):
    real = edgeseg.export.run_onnx

    def run(path, input_ids, threads=None):
        memory, mask = real(path, input_ids, threads)
        memory = memory.copy()
        memory[0, 1, 2] += delta
        if flip_mask:
            mask = mask.copy()
            mask[0, 1] = ~mask[0, 1]
        return memory, mask

    return run


@pytest.mark.parametrize("delta,flip_mask,match", [(2e-4, False, "max abs diff"), (0.0, True, "mask")])
def test_a_failed_verification_leaves_no_bundle(student, tmp_path, monkeypatch, delta, flip_mask, match):
    monkeypatch.setattr(edgeseg.export, "run_onnx", _perturbed_run_onnx(delta, flip_mask))
    out = tmp_path / "out"
    with pytest.raises(EdgesegError, match=match):
        export_bundle(student, out, REF_PROMPTS, dict(SOURCE))
    assert list(tmp_path.iterdir()) == []


def test_a_difference_within_tolerance_is_recorded(student, tmp_path, monkeypatch):
    monkeypatch.setattr(edgeseg.export, "run_onnx", _perturbed_run_onnx(5e-5))
    manifest = export_bundle(student, tmp_path / "out", REF_PROMPTS[:2], dict(SOURCE))
    assert 5e-5 - 2e-6 <= manifest["export"]["max_abs_diff"] <= 5e-5 + 2e-6


def test_a_failed_export_keeps_the_old_bundle(tiny_bundle, student, tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle[0], out)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
    monkeypatch.setattr(edgeseg.export, "run_onnx", _perturbed_run_onnx(1.0))
    with pytest.raises(EdgesegError, match="verification failed"):
        export_bundle(student, out, REF_PROMPTS, dict(SOURCE))
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_an_opset_error_leaves_nothing(student, tmp_path):
    with pytest.raises(EdgesegError, match="opset"):
        export_bundle(student, tmp_path / "out", REF_PROMPTS, dict(SOURCE), opset=16)
    assert list(tmp_path.iterdir()) == []


# ---- the CLI, full size ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s0_export(tmp_path_factory):
    return cli_exported_s0(tmp_path_factory)


def test_cli_export_full_size_s0(s0_export):
    rc, stderr, out = s0_export
    assert rc == 0, stderr
    assert "RANDOM" in stderr
    assert "max abs diff" in stderr
    manifest = verify_bundle(out)
    assert manifest["encoder"] == "mobileclip-s0" and manifest["context_length"] == 16
    assert manifest["source"]["checkpoint_sha256"] == "random" and manifest["source"]["seed"] == 0
    assert manifest["export"]["max_abs_diff"] <= TOL
    assert manifest["precision"] == "fp32" and manifest["calibration"] is None
    reference_split = set((PROMPT_SETS / "reference.txt").read_text(encoding="utf-8").split("\n"))
    eval_prompts = set((PROMPT_SETS / "eval.txt").read_text(encoding="utf-8").split("\n"))
    with np.load(out / "reference.npz", allow_pickle=False) as ref:
        ref = {k: ref[k] for k in ref.files}
    count = manifest["reference"]["prompts"]  # the default count is the CLI's choice (a few dozen)
    assert len(ref["prompts"]) == count and 8 <= count <= 200
    assert len(set(ref["prompts"].tolist())) == count and set(ref["prompts"].tolist()) <= reference_split
    assert not set(ref["prompts"].tolist()) & eval_prompts  # self-check prompts are never gate prompts

    model = s0_torch_model()
    ids, expected, expected_mask = torch_outputs(model, ref["prompts"].tolist())
    assert np.array_equal(ref["input_ids"], ids) and np.array_equal(ref["mask"], expected_mask)
    assert float(np.abs(ref["memory"][~expected_mask] - expected[~expected_mask]).max()) <= 1e-5  # seed 0's torch
    memory, mask = ort_outputs(out / "model.onnx", ids[:5])
    assert np.array_equal(mask, ids[:5] == 0) and float(np.abs(memory - expected[:5]).max()) <= TOL

    graph = onnx.load(str(out / "model.onnx"))
    ops = {n.op_type for n in graph.graph.node}
    assert "BatchNormalization" not in ops
    arrays = graph_tensors(graph)
    assert not holds(arrays, model.encoder.projection_layer.detach().numpy())
    assert holds(arrays, model.projector.weight.detach().numpy())


def _one_error_line(capsys) -> str:
    """The single error line on stderr (the RANDOM-weights note may precede it; no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if "RANDOM weights" not in line]
    assert len(lines) == 1 and lines[0].startswith("edgeseg: error:"), err
    return lines[0]


@pytest.fixture
def one_prompt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "one.txt"
    path.write_text("a dog\n", encoding="utf-8")
    return path


def test_cli_export_refuses_a_directory_that_is_not_a_bundle(tmp_path, capsys, one_prompt):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    assert main(["export", "--encoder", "mobileclip-s0", "--reference-prompts", str(one_prompt),
                 "--out", str(out)]) == 2
    assert "not a bundle" in _one_error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]


@pytest.mark.parametrize("args,match", [
    (["--encoder", "mobileclip-s9"], "unknown encoder"),
    (["--encoder", "mobileclip-s0", "--context-length", "99"], "context length"),
    (["--encoder", "mobileclip-s0", "--opset", "16"], "opset"),
    (["--encoder", "mobileclip-s0", "--checkpoint", "NOFILE"], "NOFILE"),
    (["--encoder", "mobileclip-s0", "--reference-prompts", "NOFILE"], "NOFILE"),
])
def test_cli_export_bad_input(tmp_path, capsys, monkeypatch, args, match):
    monkeypatch.chdir(tmp_path)
    assert main(["export", *args, "--out", "out"]) == 2
    assert match in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_cli_export_missing_output_folder(tmp_path, capsys):
    assert main(["export", "--encoder", "mobileclip-s0", "--out", str(tmp_path / "no" / "out")]) == 2
    assert "does not exist" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_cli_export_refuses_an_existing_file(tmp_path, capsys, one_prompt):
    out = tmp_path / "model.txt"
    out.write_text("keep")
    assert main(["export", "--encoder", "mobileclip-s0", "--reference-prompts", str(one_prompt),
                 "--out", str(out)]) == 2
    _one_error_line(capsys)
    assert out.read_text() == "keep"
