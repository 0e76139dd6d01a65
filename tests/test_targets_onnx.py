"""``--target onnx`` (the export/quantize bundle for ONNX Runtime, session options recorded), the FP16
converter, the CLI wiring of ``edgeseg build``, and that ``edgeseg.targets`` imports without torch,
TensorRT, polygraphy or coremltools."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import calibration_prompts
from onnx import TensorProto, helper, numpy_helper
from test_encoders_mobileclip import tiny_student

import edgeseg.runtime
from edgeseg.bundle import verify_bundle
from edgeseg.cli import main
from edgeseg.errors import EdgesegError
from edgeseg.export import export_bundle
from edgeseg.outputs import token_fidelity
from edgeseg.quantize import Gate
from edgeseg.targets import pipeline
from edgeseg.targets.fp16 import convert_fp16, fp16_bundle, precision_plan
from edgeseg.targets.onnx import SESSION_OPTIONS

SOURCE = {"checkpoint": None, "checkpoint_sha256": "random", "seed": 0}
REFERENCE = ["a dog", "wow!$ sign", "the leftmost child wearing blue vest", "", "red car", "traffic light"]


@pytest.fixture(scope="module")
def tiny_fp32(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx_target") / "fp32"
    export_bundle(tiny_student(["repmixer", "transformer", "transformer"], seed=3), out, REFERENCE, SOURCE)
    return out


def _prompts():
    everything = calibration_prompts()
    return pipeline.Prompts([], everything[::400][:64], "test-calibration", everything[7::300][:64])


def test_import_needs_no_heavy_dependency():
    code = ("import sys, edgeseg.targets, edgeseg.targets.pipeline, edgeseg.targets.tensorrt, edgeseg.targets.jetson, "
            "edgeseg.targets.coreml, edgeseg.targets.onnx, edgeseg.targets.fp16, edgeseg.runtime.tensorrt, "
            "edgeseg.runtime.coreml\n"
            "print(sorted(m for m in ('torch', 'tensorrt', 'polygraphy', 'coremltools') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_onnx_target_from_an_fp32_bundle(tiny_fp32, tmp_path):
    out = tmp_path / "onnx"
    result = pipeline.build("onnx", out, bundle=tiny_fp32, prompts=_prompts(), max_batch=4)
    manifest = verify_bundle(out)
    assert manifest == result.manifest and manifest["precision"] == "fp32"  # the bundle's precision by default
    assert (manifest["target"], manifest["backend"], manifest["model"]) == ("onnx", "onnxruntime", "model.onnx")
    assert manifest["files"]["model.onnx"] == verify_bundle(tiny_fp32)["files"]["model.onnx"]  # unchanged
    info = manifest["onnxruntime"]
    assert info["session_options"] == SESSION_OPTIONS and info["providers"] == ["CPUExecutionProvider"]
    assert info["version"] == ort.__version__ and set(info["latency_ms"]) == {"batch_1", "batch_4"}
    assert info["self_check"]["mean_cosine"] > 0.99999 and info["self_check"]["mask_equal"]
    assert manifest["build"] == {"target": "onnx", "precision": "fp32", "max_batch": 4, "from": "bundle (fp32)",
                                 "stages": ["onnx"]}
    with edgeseg.runtime.load(out) as runner:
        assert runner.self_check()["mean_cosine"] > 0.99999


def test_onnx_target_int8_quantizes_first(tiny_fp32, tmp_path):
    out = tmp_path / "int8"
    result = pipeline.build("onnx", out, bundle=tiny_fp32, precision="int8", prompts=_prompts(), gate=Gate(0.99, 0.9))
    manifest = verify_bundle(out)
    assert manifest["precision"] == "int8" and manifest["quantization"]["mode"] == "static"
    assert manifest["quantization"]["embedding_form"] == "gather_cast_mul"  # ONNX Runtime's fastest form
    assert "tensorrt_lint" not in manifest  # no TensorRT target, no lint
    assert manifest["build"]["stages"] == ["quantize", "onnx"] and manifest["calibration"]["count"] == 64
    assert [k for k, _ in result.rows] == ["build", "bundle", "quantize", "target", "check", "size"]
    with pytest.raises(EdgesegError, match="not a bundle"):  # out exists and is not a bundle: refused up front
        (tmp_path / "junk").mkdir()
        (tmp_path / "junk" / "x").write_text("x")
        pipeline.build("onnx", tmp_path / "junk", bundle=tiny_fp32, prompts=_prompts())


def test_cli_build_from_a_bundle(tiny_fp32, tmp_path, capsys):
    code = main(["build", "--target", "jetson", "--bundle", str(tiny_fp32), "--precision", "fp16", "--eval-limit",
                 "32", "--max-batch", "2", "--out", str(tmp_path / "j")])
    err = capsys.readouterr().err
    assert code == 0, err
    manifest = verify_bundle(tmp_path / "j")
    assert manifest["precision"] == "fp16" and manifest["engine"]["profile"]["input_ids"]["max"] == [2, 16]
    summary = err[err.index("build summary"):].splitlines()[1:]
    assert [line.split()[0] for line in summary] == ["build", "bundle", "fp16", "target", "check", "lint", "engine",
                                                     "size", "next"]
    assert main(["build", "--target", "onnx", "--bundle", str(tiny_fp32), "--checkpoint", "x.pt", "--out",
                 str(tmp_path / "y")]) == 2
    assert main(["build", "--target", "onnx", "--out", str(tmp_path / "z")]) == 2
    assert "exactly one of --encoder NAME or --bundle DIR" in capsys.readouterr().err


# -- FP16 converter ------------------------------------------------------------------------------
def test_fp16_conversion_types_and_fidelity(tiny_fp32):
    fp32 = onnx.load(str(tiny_fp32 / "model.onnx"))
    half = convert_fp16(fp32)
    assert all(i.data_type != TensorProto.FLOAT or any(n.op_type in ("LayerNormalization",) and i.name in n.input
                                                        for n in half.graph.node) for i in half.graph.initializer)
    plan = precision_plan(half)
    assert set(plan["LayerNormalization"]) == {"float32"} and set(plan["Softmax"]) == {"float32"}
    for op in ("MatMul", "Conv", "Gather", "Erf"):
        assert set(plan[op]) == {"float16"}, op
    assert len(half.graph.node) <= len(fp32.graph.node) + 4 * 7  # no-op Casts were dropped
    ids = np.array([[49406, 320, 1929, 49407] + [0] * 12, [49406] + [3] * 14 + [49407]], dtype=np.int64)
    ref = ort.InferenceSession(fp32.SerializeToString()).run(None, {"input_ids": ids})
    got = ort.InferenceSession(half.SerializeToString()).run(None, {"input_ids": ids})
    assert got[0].dtype == np.float32 and got[1].dtype == bool and np.array_equal(got[1], ref[1])
    assert token_fidelity(got[0], ref[0], ref[1])["mean_cosine"] > 0.9999


def test_fp16_conversion_handles_shared_initializers_and_overflow():
    x = helper.make_tensor_value_info("x", TensorProto.INT64, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 4])
    table = numpy_helper.from_array(np.full((5, 4), 1e6, np.float32), "table")
    scale = numpy_helper.from_array(np.ones(4, np.float32), "scale")  # read by LayerNorm AND Mul
    nodes = [helper.make_node("Gather", ["table", "x"], ["g"]),
             helper.make_node("Mul", ["g", "scale"], ["m"]),
             helper.make_node("LayerNormalization", ["m", "scale", "scale"], ["y"], axis=-1)]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [table, scale]),
                              opset_imports=[helper.make_opsetid("", 17)])
    half = convert_fp16(model)
    inits = {i.name: i.data_type for i in half.graph.initializer}
    assert inits["table"] == TensorProto.FLOAT16
    plan = precision_plan(half)
    assert plan["Mul"] == {"float16": 1} and plan["LayerNormalization"] == {"float32": 1}  # one scale, both types
    assert np.isfinite(numpy_helper.to_array(next(i for i in half.graph.initializer if i.name == "table"))).all()
    out = ort.InferenceSession(half.SerializeToString()).run(None, {"x": np.zeros((2, 4), np.int64)})[0]
    assert out.dtype == np.float32 and np.isfinite(out).all()


def test_fp16_bundle_gate(tiny_fp32, tmp_path):
    manifest = fp16_bundle(tiny_fp32, tmp_path / "fp16", calibration_prompts()[::900][:16])
    assert manifest["precision"] == "fp16" and manifest["fidelity"]["passed"]
    assert manifest["fp16"]["fp32_ops"] == ["LayerNormalization", "Softmax"]
    with pytest.raises(EdgesegError, match="misses the fidelity gate"):
        fp16_bundle(tiny_fp32, tmp_path / "strict", calibration_prompts()[::900][:16], Gate(1.0, 1.0))
    with pytest.raises(EdgesegError, match="needs an FP32 ONNX bundle"):
        fp16_bundle(tmp_path / "fp16", tmp_path / "again", ["a dog"])
    assert not (tmp_path / "strict").exists()
