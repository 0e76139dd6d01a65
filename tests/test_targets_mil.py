"""The MIL evaluator (``edgeseg.targets.mil``) against independent references: the torch encoders it
was converted from, and numpy formulas on hand-built programs; and W8A8 activation quantization."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_encoders_mobileclip import tiny_student
from test_export import tiny_teacher

from edgeseg.errors import EdgesegError
from edgeseg.outputs import token_fidelity
from edgeseg.tokenizer import get_tokenizer

ct = pytest.importorskip("coremltools", reason="coremltools is not installed (pip install coremltools)")

from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import types  # noqa: E402

from edgeseg.targets import coreml, mil  # noqa: E402

PROMPTS = ["a dog", "the leftmost child wearing blue vest", "", "two cats on a sofa", "wow!$ sign", "red car"]


def _program_model(prog):
    return ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                      compute_precision=ct.precision.FLOAT32)


@pytest.mark.parametrize("make", [lambda: tiny_student(["repmixer", "transformer", "repmixer"], seed=4),
                                  lambda: tiny_teacher(seed=4)], ids=["student", "teacher"])
def test_fp32_program_matches_the_torch_encoder(make):
    model = make().eval()
    ids = get_tokenizer()(PROMPTS, model.context_length).ids
    with torch.no_grad():
        ref, ref_mask = model(torch.from_numpy(ids))
    program = mil.load_program(coreml.convert(model, "fp32", 4))
    memory, mask = mil.evaluate_batches(program, ids, 4)
    assert np.array_equal(mask, ref_mask.numpy())
    assert np.abs(memory - ref.numpy()).max() < 1e-4
    # FP16-rounded weights: close, not equal
    program16 = mil.load_program(coreml.convert(model, "fp16", 4))
    memory16, _ = mil.evaluate_batches(program16, ids, 4)
    fid = token_fidelity(memory16, ref.numpy(), ref_mask.numpy())
    assert fid["mean_cosine"] > 0.9999 and 0 < np.abs(memory16 - ref.numpy()).max() < 0.05


def test_quantize_dequantize_and_ranges_follow_the_formulas():
    scale = np.array([0.5, 0.25, 0.1], np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3), dtype=types.fp32)],
                opset_version=ct.target.iOS17)
    def prog(x):
        q = mb.quantize(input=x, scale=scale, axis=1, output_dtype="int8", name="q")
        dq = mb.dequantize(input=q, scale=scale, axis=1, name="dq")
        return mb.add(x=mb.linear(x=dq, weight=np.eye(3, dtype=np.float32)), y=x, name="out")

    x = np.array([[1.3, -0.37, 100.0], [-70.0, 0.1, -0.26]], np.float32)
    expected_q = np.clip(np.rint(x / scale), -128, 127)
    seen = {}
    out = mil.evaluate(prog, {"x": x}, lambda name, value: seen.__setitem__(name, value.numpy()))
    np.testing.assert_array_equal(seen["q"], expected_q)
    np.testing.assert_allclose(seen["dq"], expected_q * scale, rtol=1e-6)
    np.testing.assert_allclose(out["out"], expected_q * scale + x, rtol=1e-6)
    ranges = mil.activation_ranges(prog, [{"x": x}, {"x": x * 2}])
    assert ranges["x"] == pytest.approx({"rmin": -140.0, "rmax": 200.0})
    assert ranges["q"] == pytest.approx({"rmin": float(expected_q.min()), "rmax": float(expected_q.max())})


def test_unsupported_op_and_missing_input_are_named():
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3), dtype=types.fp32)], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.argsort(x=x, axis=1)

    with pytest.raises(EdgesegError, match="'argsort'"):
        mil.evaluate(prog, {"x": np.zeros((2, 3), np.float32)})
    with pytest.raises(EdgesegError, match="input 'x' missing"):
        mil.evaluate(prog, {})


def test_w8a8_scales_are_calibration_max_over_127():
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((8, 6)).astype(np.float32), rng.standard_normal((4, 8)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(5, 6), dtype=types.fp32)], opset_version=ct.target.iOS17)
    def prog(x):
        h = mb.linear(x=x, weight=w1, name="first")
        h = mb.relu(x=h, name="act")
        return mb.linear(x=h, weight=w2, name="second")

    calibration = [rng.standard_normal((5, 6)).astype(np.float32) * s for s in (1.0, 3.0)]
    quantized, floating = coreml.quantize_activations(
        _program_model(prog), calibration_ids=None, feeds=[{"x": c} for c in calibration])
    assert floating == []
    program = mil.load_program(quantized)
    quantizers = [op for op in program.functions["main"].operations if op.op_type == "quantize"]
    scales = sorted(float(op.inputs["scale"].val) for op in quantizers)
    x_max = max(np.abs(c).max() for c in calibration)
    h_max = max(np.maximum(c @ w1.T, 0).max() for c in calibration)  # relu output feeds the second linear
    expected = sorted({round(x_max / 127, 6), round(h_max / 127, 6)})
    assert [round(s, 6) for s in sorted(set(scales))] == pytest.approx(expected, rel=1e-3)
    # the quantized program computes the float one up to 8-bit activation error, not exactly
    reference = mil.evaluate(mil.load_program(_program_model(prog)), {"x": calibration[1]})
    got = mil.evaluate(program, {"x": calibration[1]})
    (key,) = reference
    err = np.abs(got[key] - reference[key]).max()
    assert 0 < err < 0.05 * np.abs(reference[key]).max()


def test_w8a8_keeps_tiny_ranges_float():
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 4), dtype=types.fp32)], opset_version=ct.target.iOS17)
    def prog(x):
        small = mb.linear(x=x, weight=np.full((4, 4), 1e-9, np.float32), name="tiny")
        return mb.linear(x=mb.add(x=small, y=x), weight=np.eye(4, dtype=np.float32), name="normal")

    x = np.array([[1.0, -2.0, 0.5, 3.0], [0.2, 0.1, -1.0, 2.0]], np.float32)
    _, floating = coreml.quantize_activations(_program_model(prog), calibration_ids=None, feeds=[{"x": x}])
    assert floating == ["tiny"]
