"""SmoothQuant-style smoothing: which pairs it finds, that the float function is kept, the factors."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg.smoothing import channel_spread, find_targets, smooth, smoothing_factors

DIM, OUT = 6, 4


def _graph(shared_scale: bool = True, extra_reader: str | None = None) -> onnx.ModelProto:
    """x -> LN_a -> Cast(float) -> MatMul(Wa); x -> LN_b -> {MatMul(Wb1), MatMul(Wb2)}; y = sum.

    Both LayerNorms read one scale through Identity nodes (as torch's exporter dedups equal
    constants). ``extra_reader`` adds a non-MatMul reader of LN_b's output ("Relu") or a MatMul
    whose weight is not a constant ("dynamic")."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(DIM, OUT)).astype(np.float32), n) for n in ("Wa", "Wb1", "Wb2")]
    inits += [numpy_helper.from_array((rng.random(DIM) + 0.5).astype(np.float32), "gamma"),
              numpy_helper.from_array(rng.normal(size=DIM).astype(np.float32), "beta"),
              numpy_helper.from_array(rng.normal(size=DIM).astype(np.float32), "gamma_b")]
    nodes = [
        helper.make_node("Identity", ["gamma"], ["gamma_a_id"], name="id_a"),
        helper.make_node("Identity", ["gamma"], ["gamma_b_id"], name="id_b"),
        helper.make_node("LayerNormalization", ["x", "gamma_a_id", "beta"], ["ln_a"], name="LN_a", axis=-1),
        helper.make_node("Cast", ["ln_a"], ["ln_a_f"], name="cast_a", to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["ln_a_f", "Wa"], ["ya"], name="mm_a"),
        helper.make_node("LayerNormalization", ["x", "gamma_b_id" if shared_scale else "gamma_b", "beta"], ["ln_b"],
                         name="LN_b", axis=-1),
        helper.make_node("MatMul", ["ln_b", "Wb1"], ["yb1"], name="mm_b1"),
        helper.make_node("MatMul", ["ln_b", "Wb2"], ["yb2"], name="mm_b2"),
        helper.make_node("Add", ["ya", "yb1"], ["s1"], name="add1"),
        helper.make_node("Add", ["s1", "yb2"], ["y"], name="add2"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3, OUT])]
    if extra_reader == "relu":
        nodes.append(helper.make_node("Relu", ["ln_b"], ["r"], name="relu"))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [None, 3, DIM]))
    elif extra_reader == "dynamic":
        nodes.append(helper.make_node("MatMul", ["ln_b", "w_in"], ["d"], name="mm_dyn"))
        outputs.append(helper.make_tensor_value_info("d", TensorProto.FLOAT, [None, 3, OUT]))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, DIM])]
    if extra_reader == "dynamic":
        inputs.append(helper.make_tensor_value_info("w_in", TensorProto.FLOAT, [DIM, OUT]))
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x, **feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x, **feeds})[0]


def _arrays(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_finds_layernorm_matmul_pairs_through_casts():
    targets = {t.norm: t for t in find_targets(_graph())}
    assert set(targets) == {"LN_a", "LN_b"}
    assert targets["LN_a"].tensor == "ln_a_f" and targets["LN_a"].matmuls == ("mm_a",)
    assert targets["LN_b"].tensor == "ln_b" and set(targets["LN_b"].matmuls) == {"mm_b1", "mm_b2"}


@pytest.mark.parametrize("extra", ["relu", "dynamic"])
def test_a_layernorm_read_by_anything_else_is_not_a_target(extra):
    assert {t.norm for t in find_targets(_graph(extra_reader=extra))} == {"LN_a"}


def test_factors_follow_the_smoothquant_formula():
    x = np.array([8.0, 1.0, 0.0, 2.0])
    w = np.array([0.5, 2.0, 1.0, 0.0])
    got = smoothing_factors(x, w, 0.5)
    assert got == pytest.approx([np.sqrt(8.0) / np.sqrt(0.5), 1.0 / np.sqrt(2.0), 1.0, 1.0])  # zeros -> 1
    assert smoothing_factors([1e12], [1e-12], 0.5)[0] == pytest.approx(1e4)  # clipped
    assert channel_spread([1.0, 2.0, 10.0]) == pytest.approx(5.0)


def test_smoothing_keeps_the_float_function_and_scales_what_it_should():
    model = _graph()
    before = _arrays(model)
    x = np.random.default_rng(1).normal(size=(5, 3, DIM)).astype(np.float32) * 3
    expected = _run(model, x)
    peaks = {"ln_a_f": np.array([40.0, 1, 1, 1, 1, 1]), "ln_b": np.array([1.0, 1, 1, 1, 1, 60])}
    records = smooth(model, find_targets(model), peaks, alpha=0.5)
    onnx.checker.check_model(model)
    assert all(r["smoothed"] for r in records) and len(records) == 2
    np.testing.assert_allclose(_run(model, x), expected, rtol=1e-4, atol=1e-4)
    after = _arrays(model)
    nodes = {n.name: n for n in model.graph.node}
    # LN_a: own new scale and bias (the shared constants are untouched), W rows scaled by the same s
    s_a = smoothing_factors(peaks["ln_a_f"], np.abs(before["Wa"]).max(1), 0.5)
    np.testing.assert_allclose(after[nodes["LN_a"].input[1]] * s_a, before["gamma"], rtol=1e-6)
    np.testing.assert_allclose(after[nodes["LN_a"].input[2]] * s_a, before["beta"], rtol=1e-6)
    np.testing.assert_allclose(after["Wa"], before["Wa"] * s_a[:, None], rtol=1e-6)
    assert "gamma" not in after and not any(n.op_type == "Identity" for n in model.graph.node)  # now unused
    # LN_b: one s for both readers, from the larger of their row peaks
    w_peak = np.maximum(np.abs(before["Wb1"]).max(1), np.abs(before["Wb2"]).max(1))
    s_b = smoothing_factors(peaks["ln_b"], w_peak, 0.5)
    np.testing.assert_allclose(after["Wb1"], before["Wb1"] * s_b[:, None], rtol=1e-6)
    np.testing.assert_allclose(after["Wb2"], before["Wb2"] * s_b[:, None], rtol=1e-6)
    np.testing.assert_allclose(after[nodes["LN_b"].input[1]] * s_b, before["gamma"], rtol=1e-6)


def test_a_shared_constant_stays_for_the_layernorm_left_alone():
    model = _graph()
    before = _arrays(model)
    x = np.random.default_rng(2).normal(size=(4, 3, DIM)).astype(np.float32)
    expected = _run(model, x)
    peaks = {"ln_a_f": np.array([40.0, 1, 1, 1, 1, 1]), "ln_b": np.ones(DIM)}
    records = smooth(model, find_targets(model), peaks, alpha=0.5)
    assert [r["smoothed"] for r in records] == [True, False]
    after = _arrays(model)
    nodes = {n.name: n for n in model.graph.node}
    assert nodes["LN_b"].input[1] == "gamma_b_id" and "id_b" in nodes and "id_a" not in nodes
    assert np.array_equal(after["gamma"], before["gamma"]) and np.array_equal(after["beta"], before["beta"])
    assert np.array_equal(after["Wb1"], before["Wb1"])
    np.testing.assert_allclose(_run(model, x), expected, rtol=1e-4, atol=1e-4)


def test_balanced_channels_are_left_alone():
    model = _graph(shared_scale=False)
    before = model.SerializeToString()
    peaks = {"ln_a_f": np.linspace(1.0, 3.0, DIM), "ln_b": np.linspace(2.0, 9.0, DIM)}  # spread < 8
    records = smooth(model, find_targets(model), peaks, alpha=0.5)
    assert [r["smoothed"] for r in records] == [False, False]
    assert model.SerializeToString() == before


def test_alpha_must_be_a_fraction():
    with pytest.raises(ValueError, match="alpha"):
        smooth(_graph(), [], {}, alpha=1.0)
