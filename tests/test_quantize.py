"""INT8 quantization: Q/DQ structure, INT8 embedding rows, the fidelity gate and its fallback."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import calibration_prompts
from onnx import numpy_helper
from test_encoders_mobileclip import tiny_student

from edgeseg.errors import EdgesegError
from edgeseg.export import export_bundle
from edgeseg.outputs import token_fidelity
from edgeseg.quantize import Gate, quantize_bundle, quantize_embedding_rows
from edgeseg.tokenizer import get_tokenizer

SOURCE = {"checkpoint": None, "checkpoint_sha256": "random", "seed": 0}


def _tiny_bundle(tmp_path_factory, blocks, name, plant=None):
    model = tiny_student(blocks, seed=3)
    if plant is not None:
        plant(model)
    out = tmp_path_factory.mktemp(name) / "fp32"
    export_bundle(model, out, calibration_prompts()[:8], SOURCE)
    return model, out


@pytest.fixture(scope="module")
def prompts():
    everything = calibration_prompts()
    return everything[::400][:96], everything[7::300][:96]  # calibration-like, evaluation-like


@pytest.fixture(scope="module")
def fp32_bundle(tmp_path_factory):
    return _tiny_bundle(tmp_path_factory, ["repmixer", "transformer", "transformer"], "plain")


@pytest.fixture(scope="module")
def static_bundle(fp32_bundle, prompts, tmp_path_factory):
    out = tmp_path_factory.mktemp("static") / "int8"
    manifest = quantize_bundle(fp32_bundle[1], out, prompts[0], prompts[1], gate=Gate(0.99, 0.9))
    return out, manifest


def _run(path, ids):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["memory", "mask"], {"input_ids": ids})


def test_static_graph_is_symmetric_qdq_on_weight_bearing_ops_only(static_bundle):
    out, manifest = static_bundle
    model = onnx.load(str(out / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    weight_matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and producer.get(n.input[1])
                      and producer[n.input[1]].op_type == "DequantizeLinear"
                      and producer[n.input[1]].input[0] in inits]
    assert len(weight_matmuls) == manifest["quantization"]["layers"] > 0
    for node in weight_matmuls:
        dq_w, dq_a = producer[node.input[1]], producer[node.input[0]]
        assert inits[dq_w.input[0]].dtype == np.int8
        w_scale = inits[dq_w.input[1]]
        assert w_scale.ndim == 1 and w_scale.shape[0] == inits[dq_w.input[0]].shape[1]  # per output channel
        assert not inits[dq_w.input[2]].any()  # zero point 0
        assert dq_a.op_type == "DequantizeLinear" and inits[dq_a.input[1]].ndim == 0  # per-tensor activation
        assert inits[dq_a.input[2]].dtype == np.int8 and inits[dq_a.input[2]] == 0
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax", "Add") or (
                node.op_type == "MatMul" and node not in weight_matmuls):
            assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in node.input), \
                f"{node.op_type} {node.name} reads a dequantized input"


def test_embedding_rows_are_int8_with_row_scales(fp32_bundle, static_bundle):
    model, _ = fp32_bundle
    out, manifest = static_bundle
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out / "model.onnx")).graph.initializer}
    tables = [k for k, v in inits.items() if v.dtype == np.int8 and v.shape == (49408, 128)]
    assert len(tables) == 1
    scales = [v for k, v in inits.items() if v.shape == (49408, 1) and v.dtype == np.float32]
    assert len(scales) == 1
    original = model.encoder.embedding_layer.weight.detach().numpy()
    rebuilt = inits[tables[0]].astype(np.float32) * scales[0]
    assert np.all(np.abs(rebuilt - original) <= scales[0] * (0.5 + 1e-4) + 1e-6)  # half a step, float32
    assert np.allclose(np.abs(inits[tables[0]]).max(1), 127)
    assert manifest["quantization"]["embedding"] == "int8 per-row symmetric"
    assert manifest["quantization"]["embedding_form"] == "gather_cast_mul"  # the default: ONNX Runtime's form


def test_both_embedding_forms_hold_the_same_table_and_compute_the_same_values(fp32_bundle, tmp_path):
    """DequantizeLinear(q, s, 0) is (q - 0) * s in float32, as Cast(q) * s is: identical outputs."""
    model, bundle = fp32_bundle
    ids = get_tokenizer()(["a dog", "wow!$ sign", "", "the leftmost child wearing blue vest"], 16).ids
    outputs, graphs = {}, {}
    for form in ("gather_cast_mul", "dequantize_gather"):
        graph = onnx.load(str(bundle / "model.onnx"))
        saved = quantize_embedding_rows(graph, form=form)
        zero_points = 49408 if form == "dequantize_gather" else 0
        assert saved == 49408 * 128 * 3 - 49408 * 4 - zero_points  # 4 -> 1 byte per weight, FP32 scale per row
        onnx.save(graph, str(tmp_path / f"{form}.onnx"))
        outputs[form], graphs[form] = _run(tmp_path / f"{form}.onnx", ids), graph
    assert np.array_equal(outputs["gather_cast_mul"][0], outputs["dequantize_gather"][0])
    assert np.array_equal(outputs["gather_cast_mul"][1], outputs["dequantize_gather"][1])
    dq = next(n for n in graphs["dequantize_gather"].graph.node if n.op_type == "DequantizeLinear")
    inits = {i.name: numpy_helper.to_array(i) for i in graphs["dequantize_gather"].graph.initializer}
    assert [a.i for a in dq.attribute if a.name == "axis"] == [0]
    table, scale, zero = (inits[name] for name in dq.input)
    assert table.dtype == np.int8 and scale.shape == (49408,) and zero.dtype == np.int8 and not zero.any()
    original = model.encoder.embedding_layer.weight.detach().numpy()
    assert np.all(np.abs(table * scale[:, None] - original) <= scale[:, None] * (0.5 + 1e-4) + 1e-6)
    assert not any(n.op_type == "Cast" for n in graphs["dequantize_gather"].graph.node if "embedding" in n.name)
    with pytest.raises(EdgesegError, match="unknown embedding form 'int8_gather'"):
        quantize_embedding_rows(onnx.load(str(bundle / "model.onnx")), form="int8_gather")


def test_manifest_fidelity_is_what_onnxruntime_measures(fp32_bundle, static_bundle, prompts):
    out, manifest = static_bundle
    ids = get_tokenizer()(prompts[1], 16).ids
    ref, mask = _run(fp32_bundle[1] / "model.onnx", ids)
    got, got_mask = _run(out / "model.onnx", ids)
    assert np.array_equal(mask, got_mask)
    fidelity = token_fidelity(got, ref, mask)
    assert fidelity["mean_cosine"] == pytest.approx(manifest["fidelity"]["mean_cosine"], abs=1e-6)
    assert manifest["fidelity"]["passed"] and manifest["precision"] == "int8"
    assert manifest["calibration"]["count"] == len(prompts[0]) and manifest["calibration"]["method"] == "minmax"
    # And INT8 really is close to the torch FP32 model on valid tokens.
    with torch.no_grad():
        torch_memory, _ = fp32_bundle[0](torch.from_numpy(ids))
    assert token_fidelity(got, torch_memory.numpy(), mask)["mean_cosine"] > 0.99


def test_int8_bundle_is_smaller(fp32_bundle, static_bundle):
    size = lambda m: sum(f["bytes"] for f in m["files"].values())  # noqa: E731
    fp32 = json.loads((fp32_bundle[1] / "manifest.json").read_text())
    assert size(static_bundle[1]) < 0.4 * size(fp32)


def _plant_outlier(model):
    """One channel of block 2's FFN input ~1000x larger than the rest, the activation-outlier pattern
    of trained transformers: a per-tensor INT8 scale for that MatMul's input then rounds every other
    channel to zero. The FP32 function is kept (the fc1 column is divided by the same factor), and
    the FFN's weight in the residual stream is raised so that the damage shows at the output."""
    with torch.no_grad():
        block = model.encoder.transformer[2]
        block.pre_norm_ffn[0].weight[5] = 4000.0
        block.pre_norm_ffn[0].bias[5] = 0.0
        block.pre_norm_ffn[1].weight[:, 5] /= 4000.0
        block.pre_norm_ffn[4].weight *= 5.0


def test_sensitivity_fallback_returns_the_planted_layer_to_float(prompts, tmp_path_factory):
    _, fp32 = _tiny_bundle(tmp_path_factory, ["repmixer", "transformer", "transformer"], "outlier", _plant_outlier)
    out = tmp_path_factory.mktemp("outlier_q") / "int8"
    gate = Gate(0.99, 0.9)
    manifest = quantize_bundle(fp32, out, prompts[0], prompts[1], gate=gate, smooth_alpha=0)
    assert manifest["quantization"]["smoothing"] is None
    assert manifest["excluded_layers"], "the planted outlier should have failed the first attempt"
    assert "transformer.2/pre_norm_ffn/pre_norm_ffn.1/MatMul" in manifest["excluded_layers"][0]
    assert manifest["sensitivity"][0]["layer"] == manifest["excluded_layers"][0]
    assert manifest["sensitivity"][0]["score"] > 10 * manifest["sensitivity"][1]["score"]
    assert manifest["fidelity"]["mean_cosine"] >= 0.99
    ids = get_tokenizer()(prompts[1], 16).ids
    ref, mask = _run(fp32 / "model.onnx", ids)
    got, _ = _run(out / "model.onnx", ids)
    assert token_fidelity(got, ref, mask)["mean_cosine"] >= 0.99


def test_smoothing_keeps_the_planted_outlier_layer_int8(prompts, tmp_path_factory):
    """The planted outlier is a LayerNorm channel: smoothing folds it into the weights, so the
    layer the fallback had to keep in float (test above) now passes the gate in INT8."""
    _, fp32 = _tiny_bundle(tmp_path_factory, ["repmixer", "transformer", "transformer"], "outlier_sm", _plant_outlier)
    out = tmp_path_factory.mktemp("outlier_sm_q") / "int8"
    manifest = quantize_bundle(fp32, out, prompts[0], prompts[1], gate=Gate(0.99, 0.9))
    smoothing = manifest["quantization"]["smoothing"]
    assert smoothing["alpha"] == 0.5 and smoothing["candidates"] == 5  # 2 blocks x (attention, FFN) + final norm
    assert [r["norm"] for r in smoothing["smoothed"]] == [
        "/encoder/encoder/transformer.2/pre_norm_ffn/pre_norm_ffn.0/LayerNormalization"]
    assert smoothing["smoothed"][0]["spread"] > 100
    assert manifest["excluded_layers"] == []
    assert manifest["quantization"]["quantized_layers"] == manifest["quantization"]["layers"] == 11
    ids = get_tokenizer()(prompts[1], 16).ids
    ref, mask = _run(fp32 / "model.onnx", ids)
    got, _ = _run(out / "model.onnx", ids)
    assert token_fidelity(got, ref, mask)["mean_cosine"] == pytest.approx(manifest["fidelity"]["mean_cosine"], abs=1e-6)
    assert manifest["fidelity"]["mean_cosine"] >= 0.99


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_calibration_with_a_ragged_last_batch(fp32_bundle, prompts, method, tmp_path):
    """ONNX Runtime's histogram calibrators stack every batch: 50 prompts (32 + 18) once crashed them."""
    calibration = prompts[0][:50]
    manifest = quantize_bundle(fp32_bundle[1], tmp_path / method, calibration, prompts[1][:32], method=method,
                               gate=Gate(0.99, 0.9))
    assert manifest["calibration"]["method"] == method and manifest["calibration"]["count"] == 50
    assert manifest["fidelity"]["mean_cosine"] >= 0.99


def test_calibration_reader_batches_are_equal_and_strided():
    from edgeseg.quantize import _IdsReader

    ids = np.arange(50)[:, None].repeat(4, 1)
    reader = _IdsReader(ids, 32)
    assert len(reader) == 2 and reader.stride() == 2
    first, second = reader.get_next()["input_ids"], reader.get_next()["input_ids"]
    assert reader.get_next() is None
    assert first.shape == second.shape == (32, 4)
    assert list(second[:, 0]) == list(range(32, 50)) + list(range(14))  # topped up from the start
    reader.set_range(1, 2)
    assert reader.get_next()["input_ids"][0, 0] == 32 and reader.get_next() is None
    reader.rewind()
    assert sum(1 for _ in iter(reader.get_next, None)) == 2
    assert _IdsReader(np.zeros((63 * 32, 4)), 32).stride() == 7 and _IdsReader(np.zeros((61 * 32, 4)), 32).stride() == 1


def test_dynamic_sensitivity_finds_the_planted_layer(prompts, tmp_path_factory):
    _, fp32 = _tiny_bundle(tmp_path_factory, ["repmixer", "transformer", "transformer"], "outlier_dyn",
                           _plant_outlier)
    out = tmp_path_factory.mktemp("outlier_dq") / "int8"
    manifest = quantize_bundle(fp32, out, prompts[0], prompts[1], mode="dynamic", gate=Gate(0.99, 0.9))
    assert manifest["excluded_layers"], "the planted outlier should have failed the first attempt"
    assert "transformer.2/pre_norm_ffn/pre_norm_ffn.1/MatMul" in manifest["excluded_layers"][0]
    assert manifest["sensitivity"][0]["score"] > 10 * manifest["sensitivity"][1]["score"]
    assert len(manifest["excluded_layers"]) == 1 and manifest["fidelity"]["mean_cosine"] >= 0.99


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_layers_are_ranked_on_calibration_prompts_never_on_eval(mode, prompts, tmp_path_factory, monkeypatch):
    """The fallback ranks on calibration prompts; without any (dynamic mode) on the shipped calibration split."""
    from edgeseg import quantize
    from edgeseg.corpus import load_split

    _, fp32 = _tiny_bundle(tmp_path_factory, ["repmixer", "transformer", "transformer"], f"rank_{mode}",
                           _plant_outlier)
    name = "rank_layers" if mode == "static" else "rank_dynamic_layers"
    real, seen = getattr(quantize, name), []

    def spy(*args, **kwargs):  # rank_layers(fp32, qdq, ids, ...), rank_dynamic_layers(fp32, ids, ...)
        seen.append(next(a for a in args if isinstance(a, np.ndarray)))
        return real(*args, **kwargs)

    monkeypatch.setattr(quantize, name, spy)
    calibration = prompts[0] if mode == "static" else []
    gate_prompts = load_split("eval")[::90][:96]
    quantize_bundle(fp32, tmp_path_factory.mktemp(f"rank_{mode}_out") / "int8", calibration, gate_prompts, mode=mode,
                    gate=Gate(0.99, 0.9), smooth_alpha=0)
    expected = (prompts[0] if mode == "static" else load_split("calibration"))[:64]
    assert len(seen) == 1 and np.array_equal(seen[0], get_tokenizer()(expected, 16).ids)
    gate_rows = {tuple(r) for r in get_tokenizer()(gate_prompts, 16).ids.tolist()}
    assert not {tuple(r) for r in seen[0].tolist()} & gate_rows


def test_unreachable_gate_fails_without_leaving_a_bundle(fp32_bundle, prompts, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(EdgesegError, match="cannot be met"):
        quantize_bundle(fp32_bundle[1], out, prompts[0], prompts[1][:16], gate=Gate(1.0, 1.0))
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_dynamic_mode(fp32_bundle, prompts, tmp_path):
    manifest = quantize_bundle(fp32_bundle[1], tmp_path / "dyn", [], prompts[1], mode="dynamic", gate=Gate(0.99, 0.9))
    ops = {n.op_type for n in onnx.load(str(tmp_path / "dyn" / "model.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}
    assert manifest["calibration"] is None and manifest["quantization"]["mode"] == "dynamic"


def test_bad_inputs(fp32_bundle, static_bundle, prompts, tmp_path):
    with pytest.raises(EdgesegError, match="at least 32 prompts"):
        quantize_bundle(fp32_bundle[1], tmp_path / "a", prompts[0][:5], prompts[1])
    with pytest.raises(EdgesegError, match="needs an FP32 ONNX bundle"):
        quantize_bundle(static_bundle[0], tmp_path / "b", prompts[0], prompts[1])
    with pytest.raises(EdgesegError, match="not an edgeseg bundle"):
        quantize_bundle(tmp_path, tmp_path / "c", prompts[0], prompts[1])


@pytest.mark.parametrize("args,needle", [
    (["quantize", "NOTABUNDLE", "--out", "OUT"], "does not exist"),
    (["quantize", "FP32", "--out", "OUT", "--calibration", "SHORT"], "at least 32 prompts"),
    (["quantize", "FP32", "--out", "OUT", "--method", "magic"], "magic"),
    (["quantize", "FP32", "--out", "OUT", "--smooth-alpha", "1.5"], "--smooth-alpha"),
])
def test_cli_bad_input_is_one_line_exit_2(fp32_bundle, tmp_path, args, needle):
    short = tmp_path / "short.txt"
    short.write_text("a dog\nred car\n", encoding="utf-8")
    subst = {"NOTABUNDLE": str(tmp_path / "nope"), "OUT": str(tmp_path / "out"), "FP32": str(fp32_bundle[1]),
             "SHORT": str(short)}
    cmd = [sys.executable, "-m", "edgeseg.cli", *[subst.get(a, a) for a in args]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_no_gate_prompt_is_in_any_corpus_a_bundle_is_fitted_on(tmp_path):
    """`edgeseg export` + `edgeseg quantize --prune-vocab train` on the defaults: the gate's eval prompts are in
    neither the calibration prompts (which also fit the smoothing and rank layers), the pruning corpus nor the
    bundle's reference prompts. The manifest's sha256 fields show which prompts were used; they are checked
    against sha256 of the documented default sets, computed here."""
    import hashlib

    from edgeseg import corpus
    from edgeseg.bundle import load_reference, verify_bundle
    from edgeseg.cli import main

    def sha(prompts):
        return hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()

    fp32, out = tmp_path / "fp32", tmp_path / "int8"
    export_bundle(tiny_student(["repmixer", "transformer"], seed=3), fp32, corpus.reference_prompts(), SOURCE)
    assert main(["quantize", str(fp32), "--out", str(out), "--prune-vocab", "train", "--calibration-limit", "64",
                 "--eval-limit", "64", "--min-mean-cosine", "0.99", "--min-worst-cosine", "0.9"]) == 0
    manifest = verify_bundle(out)
    read = {name: (corpus.prompts_dir() / f"{name}.txt").read_text(encoding="utf-8").splitlines()
            for name in ("calibration", "distill", "eval", "reference")}
    calibration, pruning = read["calibration"][:64], read["calibration"] + read["distill"]
    reference = [str(p) for p in load_reference(out, manifest)["prompts"]]
    assert manifest["calibration"]["sha256"] == sha(calibration)
    assert manifest["tokenizer"]["pruned"]["sha256"] == sha(pruning)
    assert reference == read["reference"][:: len(read["reference"]) // 32][:32]
    gate = read["eval"][:: len(read["eval"]) // 64][:64]
    assert manifest["fidelity"]["prompts"] + manifest["fidelity"]["resegmented"]["prompts"] == len(gate)
    held_out = {corpus.normalize_prompt(p) for p in read["eval"]}  # every eval prompt, the gate's 64 included
    fitted = {"calibration, smoothing, layer ranking": calibration, "vocabulary pruning": pruning + reference,
              "reference prompts": reference}
    for name, prompts in fitted.items():
        common = held_out & {corpus.normalize_prompt(p) for p in prompts}
        assert not common, f"{len(common)} eval prompt(s) in the {name} corpus: {sorted(common)[:3]}"
