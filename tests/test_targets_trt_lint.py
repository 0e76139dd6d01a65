"""The TensorRT lint (``targets/jetson_kit/trt_lint.py``) and its data (``trt_support.json``).

The expected values come from reading onnx/onnx-tensorrt ``docs/operators.md`` at the pinned commits
by hand (typed into this file), and from hand-made graphs whose verdict follows from the matrix
text; never from the lint itself. TensorRT is not installed here: passing the lint means "inside
the documented support matrix", which is what these tests check.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg.quantize import quantize_embedding_rows
from edgeseg.targets.jetson_kit import SUPPORT, trt_lint

VERSIONS = ("10.3", "10.13", "10.14", "10.16")


@pytest.fixture(scope="module")
def support():
    return trt_lint.load_support()


# -- the data ----------------------------------------------------------------------------------
def test_support_data_names_its_sources_and_the_kit_versions(support):
    assert support["default_version"] == "10.3"
    assert trt_lint.known_versions(support) == list(VERSIONS)
    commits = {"10.1": "96e781103cfc4adf4a6bb557e94bac8e693f6f4c", "10.14": "c72727708d4ed8a379c04c4ea235c157ce9c3870",
               "10.16": "6bde6596eca84abf9afe9b4d21c18c32800fd3ad"}
    for name, matrix in support["matrices"].items():
        assert matrix["source"]["commit"] == commits[name]
        assert matrix["source"]["url"].endswith(f"/onnx/onnx-tensorrt/blob/{commits[name]}/docs/operators.md")
        assert matrix["tensorrt"] == name
    assert support["tensorrt_versions"]["10.3"]["matrices"] == ["10.1", "10.14"]
    assert support["tensorrt_versions"]["10.3"]["exact"] is False
    assert "62bdde2a04fcd53c2409cb895ee18db445b7e755" in support["tensorrt_versions"]["10.3"]["why"]
    assert support["tensorrt_versions"]["10.16"]["matrices"] == ["10.16"]


def test_transcription_matches_the_published_matrices(support):
    """Entries read off docs/operators.md by hand (the rows that matter to edgeseg's graphs)."""
    m101, m1014, m1016 = (support["matrices"][k] for k in ("10.1", "10.14", "10.16"))
    assert m101["opset"] == {"min": 9, "max": 20} and m1014["opset"] == m1016["opset"] == {"min": 9, "max": 24}
    assert m101["quantized_types"] == ["INT8", "INT4", "FP8"] and "FP4" in m1016["quantized_types"]
    for m in (m101, m1014, m1016):
        ops = m["operators"]
        assert ops["Gather"]["types"] == ["FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"]  # no INT8
        assert ops["Cast"]["types"] == ["FP32", "FP16", "BF16", "INT32", "INT64", "UINT8", "BOOL"]  # no INT8
        assert ops["Equal"]["types"] == ["FP32", "FP16", "BF16", "INT32", "INT64"]
        assert ops["Where"]["types"] == ["FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"]
        assert ops["CumSum"]["types"] == ["FP32", "FP16", "BF16"]
        assert ops["LayerNormalization"] == {"supported": True, "types": ["FP32", "FP16", "BF16"],
                                             "restrictions": "Only the first output `Y` is supported."}
        assert ops["DequantizeLinear"]["restrictions"] == "`x_zero_point` must be zero"
        assert ops["QuantizeLinear"]["restrictions"] == "`y_zero_point` must be 0"
        assert not ops["DynamicQuantizeLinear"]["supported"] and not ops["MatMulInteger"]["supported"]
    assert m101["operators"]["DequantizeLinear"]["types"] == ["INT8", "FP8", "INT4"]
    assert m1016["operators"]["DequantizeLinear"]["types"] == ["INT8", "FP8", "FP4", "INT4"]
    assert m101["operators"]["Slice"]["restrictions"] == "`axes` must be an initializer"
    assert "restrictions" not in m1014["operators"]["Slice"]
    assert m101["operators"]["Pow"]["types"] == ["FP32", "FP16", "BF16"]
    assert m1014["operators"]["Pow"]["types"] == ["FP32", "FP16", "BF16", "INT32", "INT64"]
    assert "Attention" not in m101["operators"] and m1014["operators"]["Attention"]["supported"]
    assert "RMSNormalization" in m1016["operators"] and "RMSNormalization" not in m1014["operators"]
    assert (len(m101["operators"]), len(m1014["operators"]), len(m1016["operators"])) == (196, 197, 200)


def test_a_bracketed_version_takes_the_stricter_of_both_matrices(support):
    m = trt_lint.matrix_for(support, "10.3")
    assert m["opset"] == {"min": 9, "max": 20}
    assert m["operators"]["Pow"]["types"] == ["FP32", "FP16", "BF16"]  # 10.1 lacks the integer types
    assert not m["operators"]["Attention"]["supported"]  # 10.14 only
    assert m["operators"]["Slice"]["restrictions"] == ["`axes` must be an initializer"]
    assert [s["commit"][:8] for s in m["sources"]] == ["96e78110", "c7272770"]


@pytest.mark.parametrize("release, entry", [("10.3.0.30", "10.3"), ("10.0.1", "10.3"), ("10.7.0", "10.3"),
                                            ("10.13.3.9", "10.13"), ("10.15.1", "10.14"), ("10.16", "10.16"),
                                            ("11.1.0", "10.16")])
def test_a_device_release_maps_to_the_newest_entry_not_newer_than_it(support, release, entry):
    assert trt_lint.version_for(support, release) == entry


# -- hand-made graphs --------------------------------------------------------------------------
def _model(nodes, inits, inputs, outputs, opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _ids(name="input_ids"):
    return helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", 4])


def _embedding_model(vocab=10, dim=4):
    """ids -> Gather(float table) -> memory, mask = ids == 0: an encoder's first and last steps."""
    table = numpy_helper.from_array(np.random.default_rng(0).normal(size=(vocab, dim)).astype(np.float32), "table")
    zero = numpy_helper.from_array(np.array(0, np.int64), "zero")
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["memory"], name="embed", axis=0),
             helper.make_node("Equal", ["input_ids", "zero"], ["mask"], name="pad_mask")]
    outputs = [helper.make_tensor_value_info("memory", TensorProto.FLOAT, ["batch", 4, dim]),
               helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", 4])]
    return _model(nodes, [table, zero], [_ids()], outputs)


def test_float_embedding_int64_mask_and_bool_output_are_inside_every_matrix():
    for version in VERSIONS:
        result = trt_lint.lint_model(_embedding_model(), version)
        assert result.passed, result.summary()


@pytest.mark.parametrize("version", VERSIONS)
def test_todays_int8_embedding_is_rejected_by_tensorrt_10(version):
    model = _embedding_model()
    quantize_embedding_rows(model, rows=10, form="gather_cast_mul")
    result = trt_lint.lint_model(model, version)
    assert not result.passed
    first = result.errors[0].line()
    assert first.startswith("node 'embed_int8' (Gather): input 0 'table_int8' is INT8;") and "lists Gather" in first
    lines = [f.line() for f in result.errors]
    assert any(line.startswith("node 'embed_cast' (Cast): input 0") and "INT8" in line for line in lines)
    assert "not accepted by TensorRT" in result.summary() and "(Gather)" in result.summary()


@pytest.mark.parametrize("version", VERSIONS)
def test_the_dequantize_gather_embedding_is_inside_the_matrix(version):
    model = _embedding_model()
    quantize_embedding_rows(model, rows=10, form="dequantize_gather")
    result = trt_lint.lint_model(model, version)
    assert result.passed, result.summary()
    assert any("per-axis scales (axis 0)" in f.line() for f in result.notes)  # the matrix is silent there


def test_unsupported_and_unknown_operators_are_named():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    unique = _model([helper.make_node("Unique", ["x"], ["y"], name="dedupe")], [], [x], [y])
    result = trt_lint.lint_model(unique, "10.3")
    assert result.errors[0].line() == "node 'dedupe' (Unique): TensorRT 10.3 does not support Unique"
    custom = _model([helper.make_node("FastGelu", ["x"], ["y"], name="gelu", domain="com.microsoft")], [], [x], [y])
    custom.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    result = trt_lint.lint_model(custom, "10.16")
    assert result.errors[0].line().startswith("node 'gelu' (FastGelu): domain 'com.microsoft' is not ai.onnx")


def test_integer_cumsum_is_rejected_and_float_cumsum_accepted():
    """The shape of an 'after the first EOT' padding mask: CumSum is listed for float types only."""
    for dtype, passes in ((TensorProto.INT64, False), (TensorProto.FLOAT, True)):
        axis = numpy_helper.from_array(np.array(1, np.int64), "axis")
        nodes = [helper.make_node("Cast", ["input_ids"], ["flags"], name="to_flags", to=dtype),
                 helper.make_node("CumSum", ["flags", "axis"], ["seen"], name="seen_eot")]
        out = helper.make_tensor_value_info("seen", dtype, ["batch", 4])
        result = trt_lint.lint_model(_model(nodes, [axis], [_ids()], [out]), "10.3")
        assert result.passed is passes, result.summary()
        if not passes:
            assert result.errors[0].line().startswith("node 'seen_eot' (CumSum): input 0 'flags' is INT64")


def _qdq_model(zero_point):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(zero_point, np.int8), "zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="quant"),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dequant")]
    return _model(nodes, inits, [x], [y])


def test_qdq_needs_a_constant_zero_zero_point():
    assert trt_lint.lint_model(_qdq_model(0), "10.3").passed
    result = trt_lint.lint_model(_qdq_model(3), "10.3")
    assert result.errors[0].line() == "node 'quant' (QuantizeLinear): zero point 'zp' is not zero (TensorRT " \
                                      "quantizes symmetrically)"


def test_an_int8_network_output_is_rejected():
    model = _qdq_model(0)
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("q", TensorProto.INT8, [2, 3]))
    model.graph.node.pop()
    lines = [f.line() for f in trt_lint.lint_model(model, "10.16").errors]
    assert any(line.startswith("graph: network output 'q' is INT8") for line in lines)


def test_slice_axes_computed_in_the_graph_fail_10_3_but_not_10_16():
    """10.1-GA: "`axes` must be an initializer" (so 10.3, bracketed by it); 10.14+: no restriction."""
    data = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(np.array([0], np.int64), n) for n in ("starts", "zero")] + \
        [numpy_helper.from_array(np.array([2], np.int64), "ends")]
    nodes = [helper.make_node("Add", ["zero", "zero"], ["axes"], name="axes_sum"),
             helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"], name="cut")]
    model = _model(nodes, inits, [data], [out])
    result = trt_lint.lint_model(model, "10.3")
    assert result.errors[0].line().startswith("node 'cut' (Slice): input 'axes' (axes) must be an initializer")
    assert trt_lint.lint_model(model, "10.16").passed


def test_opset_21_is_outside_10_3_but_inside_10_16():
    model = _embedding_model()
    model.opset_import[0].version = 21
    result = trt_lint.lint_model(model, "10.3")
    assert result.errors[0].line() == "graph: ai.onnx opset 21 is outside the 9..20 that TensorRT 10.3 documents"
    assert trt_lint.lint_model(model, "10.16").passed


def test_layernorm_using_its_mean_output_is_rejected():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "mean")]
    inits = [numpy_helper.from_array(np.ones(4, np.float32), "g"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b")]
    node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y", "mean"], name="ln", axis=-1)
    result = trt_lint.lint_model(_model([node], inits, [x], outs), "10.3")
    assert result.errors[0].line().startswith("node 'ln' (LayerNormalization): only the first output is supported")


def test_lint_file_reads_a_model_with_external_weights(tmp_path):
    model = _embedding_model(vocab=300, dim=8)
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.onnx.data",
              size_threshold=64)
    assert (tmp_path / "m.onnx.data").stat().st_size >= 300 * 8 * 4
    results = trt_lint.lint_versions(tmp_path / "m.onnx")
    assert list(results) == list(VERSIONS) and all(r.passed for r in results.values())
    record = results["10.3"].record()
    assert record["tensorrt_version"] == "10.3" and record["combine"] == "intersection" and record["passed"]


def test_the_support_file_is_package_data():
    import fnmatch
    import re
    from pathlib import Path

    setup = (Path(__file__).resolve().parents[1] / "setup.py").read_text(encoding="utf-8")
    patterns = re.findall(r'"([^"]+\*[^"]*)"', setup[setup.index("package_data"):])
    relative = SUPPORT.relative_to(SUPPORT.parents[2]).as_posix()  # targets/jetson_kit/trt_support.json
    assert any(fnmatch.fnmatch(relative, p) for p in patterns)


# -- every graph the TensorRT targets emit -------------------------------------------------------
# Tiny configs of each family: the op set does not depend on the width or the number of blocks
# (test_real_size_s0_has_the_tiny_op_set checks that for S0). S1 and L are transformer blocks only,
# so one tiny transformer-only student covers both.
def _tiny_teacher():
    from test_encoders_sam3 import TINY, _randomize

    from edgeseg.encoders import get_config
    from edgeseg.encoders.sam3 import SAM3TextEncoder

    teacher = SAM3TextEncoder("sam3-tiny", {**get_config("sam3"), **TINY}, 32).eval()
    _randomize(teacher, 3)
    return teacher


def _families():
    from test_encoders_mobileclip import tiny_student

    from edgeseg.encoders import get_config

    return {  # S0's own block list at width 128
        "s0": lambda: tiny_student(get_config("mobileclip-s0")["blocks"], seed=1),
        "s1-l": lambda: tiny_student(["transformer", "transformer"], seed=2),
        "teacher": _tiny_teacher,
    }


@pytest.fixture(scope="module")
def emitted(tmp_path_factory):
    """family/precision -> ONNX path of the graph the gpu/jetson targets build from: the exporter's FP32
    graph, the FP16 step's conversion, and the INT8 step's graph (:func:`edgeseg.quantize._quantize`,
    the function quantize_bundle runs for every attempt) with the TensorRT embedding form, the
    pruned-vocabulary variant, and the ONNX Runtime form. The gates around them are not run here
    (test_targets_jetson builds through the whole pipeline)."""
    from conftest import calibration_prompts

    from edgeseg.export import export_onnx
    from edgeseg.quantize import _quantize, prune_embedding_rows
    from edgeseg.targets.fp16 import convert_fp16
    from edgeseg.targets.pipeline import EMBEDDING_FORM
    from edgeseg.tokenizer import VOCAB_SIZE, get_tokenizer
    from edgeseg.vocab import prune_vocabulary

    root = tmp_path_factory.mktemp("trt_lint_graphs")
    prompts = calibration_prompts()
    calibration = prompts[::400][:32]
    paths = {}
    for family, make in _families().items():
        model = make()
        fp32 = export_onnx(model, root / f"{family}-fp32.onnx")
        paths[(family, "fp32")] = fp32
        onnx.save(convert_fp16(onnx.load(str(fp32))), str(root / f"{family}-fp16.onnx"))
        paths[(family, "fp16")] = root / f"{family}-fp16.onnx"
        ids = get_tokenizer()(calibration, model.context_length).ids
        _quantize(fp32, root / f"{family}-int8.onnx", "static", "minmax", [], root / f"{family}.cache", ids, True,
                  VOCAB_SIZE, EMBEDDING_FORM["jetson"])
        paths[(family, "int8")] = root / f"{family}-int8.onnx"
    s0_ids = get_tokenizer()(calibration, 16).ids
    _quantize(paths[("s0", "fp32")], root / "s0-int8-ort.onnx", "static", "minmax", [], root / "ort.cache", s0_ids,
              True, VOCAB_SIZE, EMBEDDING_FORM["onnx"])
    paths[("s0", "int8-ort")] = root / "s0-int8-ort.onnx"
    pruned = prune_vocabulary(prompts[:200])
    model = onnx.load(str(paths[("s0", "fp32")]))
    prune_embedding_rows(model, pruned.old_ids)
    onnx.save(model, str(root / "s0-fp32-pruned.onnx"))
    pruned_ids = pruned.tokenizer(pruned.write(root / "pruned.txt.gz"), 16)(calibration, 16).ids
    _quantize(root / "s0-fp32-pruned.onnx", root / "s0-int8-pruned.onnx", "static", "minmax", [],
              root / "pruned.cache", pruned_ids, True, pruned.vocab_size, EMBEDDING_FORM["gpu"])
    paths[("s0", "int8-pruned")] = root / "s0-int8-pruned.onnx"
    return paths


@pytest.mark.parametrize("family", ["s0", "s1-l", "teacher"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_graph_the_tensorrt_targets_emit_passes_every_kit_version(emitted, family, precision):
    for version, result in trt_lint.lint_versions(emitted[(family, precision)]).items():
        assert result.passed, f"{family} {precision} {version}: {result.summary()}"


def test_the_pruned_vocabulary_int8_graph_passes(emitted):
    model = onnx.load(str(emitted[("s0", "int8-pruned")]), load_external_data=False)
    table = next(i for i in model.graph.initializer if i.name.endswith("_int8") and len(i.dims) == 2)
    assert 512 < table.dims[0] < 49408  # pruned rows, read through DequantizeLinear
    assert all(r.passed for r in trt_lint.lint_versions(emitted[("s0", "int8-pruned")]).values())


def test_the_onnx_runtime_int8_graph_still_fails_for_tensorrt(emitted):
    """The onnx target keeps Gather -> Cast -> Mul; it must never reach a TensorRT build."""
    for version, result in trt_lint.lint_versions(emitted[("s0", "int8-ort")]).items():
        assert not result.passed and "(Gather): input 0" in result.errors[0].line() and "is INT8" in \
            result.errors[0].line(), version


def _op_signature(path) -> set:
    model = onnx.load(str(path), load_external_data=False)
    types = trt_lint.infer_types(model)
    return {(n.op_type, tuple(types.get(i, "") for i in n.input if i)) for n in model.graph.node}


def test_real_size_s0_has_the_tiny_op_set_and_passes(emitted, tmp_path):
    """One full-size S0 (random weights): the same (op, input types) pairs as the tiny S0 config, and
    inside every kit version's matrix, in FP32 and with the TensorRT form of the INT8 embedding."""
    from edgeseg.encoders import build_encoder
    from edgeseg.export import export_onnx

    path = export_onnx(build_encoder("mobileclip-s0"), tmp_path / "s0.onnx")
    # default-initialised weights repeat (LayerNorm ones, zero biases): the exporter shares them through
    # Identity nodes, which random tiny weights never need
    assert _op_signature(path) - _op_signature(emitted[("s0", "fp32")]) <= {("Identity", ("FP32",))}
    assert _op_signature(emitted[("s0", "fp32")]) <= _op_signature(path)
    assert all(r.passed for r in trt_lint.lint_versions(path).values())
    model = onnx.load(str(path))
    quantize_embedding_rows(model, form="dequantize_gather")
    assert all(trt_lint.lint_model(model, v).passed for v in VERSIONS)
