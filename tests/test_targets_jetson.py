"""``--target jetson`` off the device: the self-contained bundle, its ONNX against the recorded outputs,
its Q/DQ graph, and the on-device script ``build_engine.py`` (everything that runs without TensorRT).

TensorRT is not installed here, so the script is exercised up to the point where it needs TensorRT
(dry run, hash checks, the missing-TensorRT exit) and its pure parts are unit tested; a placeholder
file stands in for an engine only to test the manifest bookkeeping, never as a TensorRT result.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import calibration_prompts
from onnx import TensorProto, numpy_helper
from test_encoders_mobileclip import tiny_student

import edgeseg.runtime
from edgeseg.bundle import verify_bundle
from edgeseg.errors import EdgesegError
from edgeseg.export import export_bundle
from edgeseg.outputs import token_fidelity
from edgeseg.quantize import Gate, quantize_bundle
from edgeseg.targets import jetson, pipeline
from edgeseg.targets import tensorrt as trt_target
from edgeseg.targets.pipeline import Prompts

SOURCE = {"checkpoint": None, "checkpoint_sha256": "random", "seed": 0}
REFERENCE = ["a dog", "wow!$ sign", "the leftmost child wearing blue vest", "", "a player in white " * 6,
             "red car", "two cats on a sofa", "traffic light", "a person holding an umbrella"]
GATE = Gate(0.99, 0.9)  # random tiny weights: the real default gate is for trained models
MAX_BATCH = 4


def _prompts():
    everything = calibration_prompts()
    return Prompts([], everything[::400][:64], "test-calibration", everything[7::300][:64])


def load_kit(path: Path):
    spec = importlib.util.spec_from_file_location("build_engine_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_fp32(tmp_path_factory):
    out = tmp_path_factory.mktemp("jetson_fp32") / "fp32"
    export_bundle(tiny_student(["repmixer", "transformer", "transformer"], seed=3), out, REFERENCE, SOURCE)
    return out


@pytest.fixture(scope="module")
def int8_build(tiny_fp32, tmp_path_factory):
    out = tmp_path_factory.mktemp("jetson_int8") / "bundle"
    result = pipeline.build("jetson", out, bundle=tiny_fp32, precision="int8", prompts=_prompts(), gate=GATE,
                            max_batch=MAX_BATCH, facts={"on_jetson": False})
    return out, result


@pytest.fixture(scope="module")
def fp16_build(tiny_fp32, tmp_path_factory):
    out = tmp_path_factory.mktemp("jetson_fp16") / "bundle"
    result = pipeline.build("jetson", out, bundle=tiny_fp32, precision="fp16", prompts=_prompts(),
                            max_batch=MAX_BATCH, facts={"on_jetson": False})
    return out, result


def test_int8_bundle_is_self_contained_and_verifies(int8_build):
    out, result = int8_build
    manifest = verify_bundle(out)
    assert manifest == result.manifest
    assert set(manifest["files"]) == {"model.onnx", "model.onnx.data", "bpe_vocab.txt.gz", "reference.npz",
                                      "build_engine.py", "bundlecheck.py", "manifest.schema.json"}
    assert (manifest["target"], manifest["backend"], manifest["model"], manifest["precision"]) == (
        "jetson", "onnxruntime", "model.onnx", "int8")
    engine = manifest["engine"]
    assert engine["built"] is False and engine["file"] == "model.engine" and engine["onnx"] == "model.onnx"
    assert engine["profile"] == {"input_ids": {"min": [1, 16], "opt": [1, 16], "max": [MAX_BATCH, 16]}}
    assert engine["builder_options"]["strongly_typed"] is True and engine["builder_options"]["tf32"] is False
    assert engine["builder_options"]["hardware_compatibility"] == "none"  # not available on Jetson
    assert engine["verify_gate"] == {"mean_cosine": 0.99, "worst_cosine": 0.9}  # lowered to the bundle's own gate
    assert manifest["build"]["stages"] == ["quantize", "jetson"]
    assert manifest["quantization"]["mode"] == "static" and manifest["host_check"]["passed"]
    assert manifest["jetson"]["command"] == "python3 build_engine.py"
    assert (out / "build_engine.py").stat().st_mode & 0o111
    keys = [k for k, _ in result.rows]
    assert keys[0] == "build" and keys[-1] == "next" and "quantize" in keys and "size" in keys


def test_jetson_onnx_runs_in_onnxruntime_and_matches_recorded_outputs(int8_build):
    out, _ = int8_build
    manifest = json.loads((out / "manifest.json").read_text())
    with np.load(out / "reference.npz") as data:
        ids, ref_memory, ref_mask = data["input_ids"], data["memory"], data["mask"]
    assert ids.shape == (len(REFERENCE), 16) and ids.dtype == np.int64
    assert np.array_equal(ref_mask, ids == 0)
    assert (ids[1][:list(ids[1]).index(49407)] == 0).any()  # "wow!$ sign" holds a real token 0, masked too
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (ids[:1], ids[:MAX_BATCH], ids):
        memory, mask = session.run(["memory", "mask"], {"input_ids": batch})
        assert np.array_equal(mask, ref_mask[:len(batch)])
        fid = token_fidelity(memory, ref_memory[:len(batch)], ref_mask[:len(batch)])
        assert fid["mean_cosine"] >= manifest["engine"]["verify_gate"]["mean_cosine"]
        assert fid["worst_cosine"] >= manifest["engine"]["verify_gate"]["worst_cosine"]
    with edgeseg.runtime.load(out) as runner:  # the bundle runs with edgeseg's own runtime too
        assert runner.self_check()["mean_cosine"] == pytest.approx(manifest["host_check"]["mean_cosine"], abs=1e-6)


def test_qdq_nodes_are_symmetric_int8(int8_build):
    out, _ = int8_build
    model = onnx.load(str(out / "model.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert any(n.op_type == "QuantizeLinear" for n in qdq) and any(n.op_type == "DequantizeLinear" for n in qdq)
    for node in qdq:
        assert len(node.input) == 3, f"{node.name} has no explicit zero point"
        zero_point = inits[node.input[2]]
        assert zero_point.data_type == TensorProto.INT8, f"{node.name} is not INT8"
        assert not numpy_helper.to_array(zero_point).any(), f"{node.name} is asymmetric"
        assert (numpy_helper.to_array(inits[node.input[1]]) > 0).all()
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:  # a weight: INT8, per output channel
            weight = numpy_helper.to_array(inits[node.input[0]])
            assert weight.dtype == np.int8 and np.abs(weight).max() <= 127
            assert numpy_helper.to_array(inits[node.input[1]]).shape == (weight.shape[1],)
    assert not any(i.data_type == TensorProto.UINT8 for i in model.graph.initializer)


def test_fp16_bundle_keeps_layernorm_and_softmax_fp32(fp16_build):
    from edgeseg.targets.fp16 import precision_plan

    out, result = fp16_build
    manifest = verify_bundle(out)
    assert manifest["precision"] == "fp16" and manifest["build"]["stages"] == ["fp16", "jetson"]
    model = onnx.load(str(out / "model.onnx"))
    plan = precision_plan(model)
    assert set(plan["LayerNormalization"]) == {"float32"} and plan["Softmax"] == {"float32": 2}
    assert set(plan["MatMul"]) == {"float16"}
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT, TensorProto.BOOL]
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.INT64
    assert manifest["host_check"]["passed"] and manifest["host_check"]["gate"]["mean_cosine"] == 0.999
    assert "FP16" in manifest["engine"]["network"]


# -- the on-device script --------------------------------------------------------------------------
def test_script_imports_only_numpy_tensorrt_polygraphy_and_stdlib(int8_build):
    out, _ = int8_build
    tree = ast.parse((out / "build_engine.py").read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    # edgeseg only when imported by edgeseg itself; on the device the bundle rules come from bundlecheck.py
    assert roots - set(sys.stdlib_module_names) == {"numpy", "tensorrt", "polygraphy", "edgeseg"}
    checker = set()
    for node in ast.walk(ast.parse((out / "bundlecheck.py").read_text())):
        if isinstance(node, ast.Import):
            checker |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            checker.add(node.module.split(".")[0])
    assert checker - set(sys.stdlib_module_names) == {"jsonschema"}  # optional: used when installed
    code = ("import runpy, sys; sys.argv = ['build_engine.py', '--dry-run']\n"
            "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit as e:\n    rc = e.code\n"
            "print('LOADED', sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'edgeseg', 'onnx'}), rc)")
    done = subprocess.run([sys.executable, "-c", code], cwd=out, capture_output=True, text=True, timeout=120)
    assert "LOADED [] 0" in done.stdout, done.stdout + done.stderr


def test_script_dry_run_prints_the_profile_and_strongly_typed_build(int8_build):
    out, _ = int8_build
    done = subprocess.run([sys.executable, str(out / "build_engine.py"), "--dry-run", "--trtexec", sys.executable],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "profile    input_ids min 1x16 opt 1x16 max 4x16" in done.stdout
    line = next(x for x in done.stdout.splitlines() if x.startswith("trtexec "))
    assert f"--onnx={out.resolve() / 'model.onnx'}" in line and "--stronglyTyped" in line
    assert "--minShapes=input_ids:1x16 --optShapes=input_ids:1x16 --maxShapes=input_ids:4x16" in line
    assert "--int8" not in line and "--fp16" not in line  # strongly typed: the ONNX types decide
    assert not (out / "model.engine").exists()


@pytest.fixture
def bundle_copy(int8_build, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(int8_build[0], copy)
    return copy


def test_script_without_tensorrt_exits_2_with_one_clear_line(bundle_copy):
    before = (bundle_copy / "manifest.json").read_bytes()
    done = subprocess.run([sys.executable, str(bundle_copy / "build_engine.py")], capture_output=True, text=True,
                          timeout=120, env={"PATH": "/nonexistent"})
    assert done.returncode == 2
    assert done.stderr.startswith("build_engine: error: TensorRT not found") and done.stderr.count("\n") == 1
    assert not (bundle_copy / "model.engine").exists()
    assert (bundle_copy / "manifest.json").read_bytes() == before


def test_script_refuses_a_modified_bundle(bundle_copy):
    data = bytearray((bundle_copy / "reference.npz").read_bytes())
    data[-10] ^= 0xFF
    (bundle_copy / "reference.npz").write_bytes(bytes(data))
    done = subprocess.run([sys.executable, str(bundle_copy / "build_engine.py"), "--dry-run"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "reference.npz does not match its sha256" in done.stderr


def test_kit_finds_builders(int8_build):
    kit = load_kit(int8_build[0] / "build_engine.py")
    jetpack = "/usr/src/tensorrt/bin/trtexec"
    assert kit.find_trtexec(which=lambda n: "/opt/bin/trtexec", is_file=lambda p: p == jetpack) == jetpack
    assert kit.find_trtexec(which=lambda n: "/opt/bin/trtexec", is_file=lambda p: False) == "/opt/bin/trtexec"
    assert kit.find_trtexec("/x/trtexec", which=lambda n: None, is_file=lambda p: p == "/x/trtexec") == "/x/trtexec"
    assert kit.find_trtexec(which=lambda n: None, is_file=lambda p: False) is None
    fake_trt = object()
    assert kit.choose_builder("auto", True, fake_trt, "/t") == "polygraphy"
    assert kit.choose_builder("auto", True, None, "/t") == "trtexec"  # polygraphy alone cannot build
    assert kit.choose_builder("trtexec", True, fake_trt, "/t") == "trtexec"
    with pytest.raises(kit.KitError, match="TensorRT not found"):
        kit.choose_builder("auto", True, None, None)
    with pytest.raises(kit.KitError, match="polygraphy"):
        kit.choose_builder("polygraphy", False, fake_trt, "/t")


def test_kit_parsers(int8_build, tmp_path):
    kit = load_kit(int8_build[0] / "build_engine.py")
    assert kit.trtexec_version("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec") == "10.3.0"
    assert kit.trtexec_version("[TensorRT v101300]") == "10.13.0"
    assert kit.trtexec_version("[TensorRT v8602]") == "8.6.2"
    assert kit.tensorrt_version_tuple("8.6.2") < kit.MIN_TENSORRT <= kit.tensorrt_version_tuple("10.3.0")
    text = json.dumps([{"name": "memory", "dimensions": "2x3x4", "values": list(range(24))},
                       {"name": "mask", "dimensions": "2x3", "values": [0, 1, 1, 0, 0, 1]}])
    parsed = kit.parse_trtexec_outputs(text)
    assert parsed["memory"].shape == (2, 3, 4) and parsed["memory"][1, 2, 3] == 23
    assert parsed["mask"].astype(bool).tolist() == [[False, True, True], [False, False, True]]
    log = "[I] GPU Compute Time: min = 0.41 ms, max = 0.9 ms, mean = 0.45 ms, median = 0.44 ms, percentile(90%) = 1"
    assert kit.parse_trtexec_latency(log) == 0.44 and kit.parse_trtexec_latency("nothing") is None
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: x\n")
    assert kit.l4t_release(str(release)) == "R36.4.0" and kit.l4t_release(str(tmp_path / "absent")) is None
    assert jetson.is_jetson(release) and not jetson.is_jetson(tmp_path / "absent")
    assert kit.profile_shapes(16, 8) == {"input_ids": {"min": [1, 16], "opt": [1, 16], "max": [8, 16]}}
    with pytest.raises(kit.KitError):
        kit.profile_shapes(16, 0)


def test_kit_verification_and_manifest_bookkeeping(bundle_copy):
    kit = load_kit(bundle_copy / "build_engine.py")
    manifest = kit.read_manifest(bundle_copy)
    plan = kit.engine_plan(manifest)
    reference = kit.load_reference(bundle_copy, manifest)
    exact = kit.verify_outputs(reference["memory"], reference["mask"], reference, plan["gate"])
    assert exact["passed"] and exact["mean_cosine"] == pytest.approx(1.0) and exact["mask_equal"]
    flipped = reference["mask"].copy()
    flipped[0, -1] = ~flipped[0, -1]
    assert not kit.verify_outputs(reference["memory"], flipped, reference, plan["gate"])["passed"]
    noisy = reference["memory"] + np.random.default_rng(0).normal(0, 5, reference["memory"].shape)
    assert kit.verify_outputs(noisy.astype(np.float32), reference["mask"], reference, plan["gate"])["reason"] == \
        "below the cosine gate"
    # A placeholder file, not an engine: this checks only how the script records a verified engine.
    (bundle_copy / "model.engine").write_bytes(b"placeholder, not a TensorRT engine")
    kit.update_manifest(bundle_copy, manifest, "model.engine", {"version": "placeholder"})
    updated = verify_bundle(bundle_copy)  # edgeseg accepts the script's manifest
    assert (updated["model"], updated["backend"], updated["engine"]["built"]) == ("model.engine", "tensorrt", True)
    assert updated["engine"]["onnx"] == "model.onnx" and "model.onnx" in updated["files"]


# -- stages and branches -------------------------------------------------------------------------
def test_stage_plan_refuses_what_tensorrt_cannot_take(tiny_fp32, tmp_path):
    prompts = _prompts()
    dynamic = tmp_path / "dynamic"
    quantize_bundle(tiny_fp32, dynamic, prompts.calibration, prompts.evaluation, mode="dynamic", gate=GATE)
    with pytest.raises(EdgesegError, match="static Q/DQ"):
        pipeline.build("jetson", tmp_path / "a", bundle=dynamic, prompts=prompts, facts={"on_jetson": False})
    with pytest.raises(EdgesegError, match="starts from the FP32 bundle"):
        pipeline.build("jetson", tmp_path / "b", bundle=dynamic, precision="fp16", prompts=prompts,
                       facts={"on_jetson": False})
    assert pipeline.stage_plan({"precision": "fp32", "backend": "onnxruntime"}, "int8", "gpu") == ["quantize"]
    assert pipeline.stage_plan({"precision": "fp32", "backend": "onnxruntime"}, "fp16", "gpu") == ["fp16"]
    with pytest.raises(EdgesegError, match="tensorrt bundle"):
        pipeline.stage_plan({"precision": "int8", "backend": "tensorrt", "target": "gpu"}, "int8", "gpu")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not list(tmp_path.glob(".a.build-*"))  # the work folder is removed on failure


def test_on_a_jetson_the_gpu_path_needs_tensorrt(monkeypatch):
    monkeypatch.setattr(trt_target, "import_tensorrt", lambda: None)
    with pytest.raises(EdgesegError, match="^TensorRT not found"):
        pipeline.preflight("jetson", "int8", False, jetson_probe=lambda: True)
    assert pipeline.preflight("jetson", "int8", False, jetson_probe=lambda: False) == {"on_jetson": False}
    with pytest.raises(EdgesegError, match="not available on Jetson"):
        trt_target.builder_options(hardware_compatible=True, on_jetson=True)


def test_fp32_bundle_goes_straight_to_the_target(tiny_fp32, tmp_path):
    result = pipeline.build("jetson", tmp_path / "fp32", bundle=tiny_fp32, prompts=Prompts([]), max_batch=2,
                            facts={"on_jetson": False})
    manifest = verify_bundle(tmp_path / "fp32")
    assert manifest["precision"] == "fp32" and manifest["build"]["stages"] == ["jetson"]
    assert manifest["engine"]["verify_gate"] == {"mean_cosine": 0.9999, "worst_cosine": 0.999}
    assert manifest["host_check"]["max_abs_diff"] < 1e-4 and "FP32" in manifest["engine"]["network"]
    assert manifest["files"]["model.onnx"] == verify_bundle(tiny_fp32)["files"]["model.onnx"]
    assert [k for k, _ in result.rows][:2] == ["build", "bundle"]
