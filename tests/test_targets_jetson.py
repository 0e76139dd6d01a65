"""``--target jetson`` off the device: the self-contained bundle, its ONNX against the recorded outputs,
its Q/DQ graph, and the on-device script ``build_engine.py`` (everything that runs without TensorRT).

TensorRT is not installed here, so the script is exercised up to the point where it needs TensorRT
(dry run, hash checks, the missing-TensorRT exit) and its pure parts are unit tested; a placeholder
file stands in for an engine only to test the manifest bookkeeping, never as a TensorRT result.
"""

from __future__ import annotations

import ast
import hashlib
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
                                      "build_engine.py", "trt_lint.py", "trt_support.json", "bundlecheck.py",
                                      "manifest.schema.json"}
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
    assert keys[0] == "build" and keys[-1] == "next" and {"quantize", "lint", "engine", "size"} <= set(keys)


def test_int8_bundle_is_linted_and_reads_its_embedding_through_qdq(int8_build):
    out, _ = int8_build
    manifest = verify_bundle(out)
    assert manifest["quantization"]["embedding_form"] == "dequantize_gather"
    lint = manifest["tensorrt_lint"]
    assert lint["tensorrt_version"] == "10.3" and lint["passed"] and lint["errors"] == []
    assert lint["model"] == "model.onnx" and lint["model_sha256"] == manifest["files"]["model.onnx"]["sha256"]
    assert lint["support_data"]["sha256"] == manifest["files"]["trt_support.json"]["sha256"]
    assert {v: r["passed"] for v, r in lint["all_versions"].items()} == {
        "10.3": True, "10.13": True, "10.14": True, "10.16": True}
    model = onnx.load(str(out / "model.onnx"))
    (table_dq,) = [n for n in model.graph.node
                   if n.op_type == "DequantizeLinear" and n.output[0].endswith("_dequantized")]
    gather = next(n for n in model.graph.node if n.op_type == "Gather" and n.input[0] == table_dq.output[0])
    assert gather.input[1] == "input_ids"
    assert not any(n.op_type == "Cast" and n.input[0].endswith("_i8") for n in model.graph.node)


def test_int8_bundle_states_bundle_and_expected_engine_bytes(int8_build):
    """Hand count: the tiny embedding table is 49,408 x 128; dequantized it is FP32 in the engine (the
    stated assumption), INT8 (+ FP32 scales, INT8 zero points) in the bundle."""
    out, _ = int8_build
    manifest = verify_bundle(out)
    sizes = manifest["sizes"]
    assert sizes["bundle_bytes"] == sum(f["bytes"] for f in manifest["files"].values())
    assert sizes["by_kind"]["dequantized_to_float"] == 49408 * 128 * 4
    assert sizes["expected_engine_weight_bytes"] == sum(sizes["by_kind"].values())
    assert sizes["if_dequantize_not_folded_bytes"] == sizes["expected_engine_weight_bytes"] - 49408 * 128 * 3
    assert "TensorRT did not run" in sizes["assumption"]


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
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            # a weight (INT8, per output channel, axis 1) or the embedding table (per row, axis 0)
            weight = numpy_helper.to_array(inits[node.input[0]])
            axis = next(a.i for a in node.attribute if a.name == "axis")
            assert weight.dtype == np.int8 and np.abs(weight).max() <= 127
            assert numpy_helper.to_array(inits[node.input[1]]).shape == (weight.shape[axis],)
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
    # the lint it runs first: numpy and onnx (imported only when a graph is linted); the bundle rules:
    # the standard library (jsonschema when it is installed)
    for name, allowed in (("trt_lint.py", {"onnx"}), ("bundlecheck.py", {"jsonschema"})):
        tree = ast.parse((out / name).read_text())
        roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
        assert roots - set(sys.stdlib_module_names) == allowed, name
    code = ("import runpy, sys; sys.argv = ['build_engine.py', '--dry-run']\n"
            "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit as e:\n    rc = e.code\n"
            "print('LOADED', sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'edgeseg'}), rc)")
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
    assert "lint       PASS: TensorRT 10.3 (JetPack 6.1 / 6.2, L4T R36.4): " in done.stdout


def _run_script(bundle: Path, *args: str, block_onnx: bool = False):
    """build_engine.py as on a device; ``block_onnx``: as where the onnx package is not installed."""
    code = ("import runpy, sys\n" + ("sys.modules['onnx'] = None\n" if block_onnx else "") +
            f"sys.argv = ['build_engine.py', *{list(args)!r}]\n"
            "runpy.run_path('build_engine.py', run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], cwd=bundle, capture_output=True, text=True, timeout=120)


def _replace_model(bundle: Path, model) -> None:
    """Put another graph in a bundle copy, re-hashed (a bundle that edgeseg's lint never saw)."""
    onnx.save(model, str(bundle / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    manifest = json.loads((bundle / "manifest.json").read_text())
    for name in ("model.onnx", "model.onnx.data"):
        manifest["files"][name] = {"sha256": hashlib.sha256((bundle / name).read_bytes()).hexdigest(),
                                   "bytes": (bundle / name).stat().st_size}
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_script_without_onnx_uses_the_hosts_lint_of_the_same_file(bundle_copy):
    done = _run_script(bundle_copy, "--dry-run", block_onnx=True)
    assert done.returncode == 0, done.stderr
    assert "lint       PASS (recorded on the host for TensorRT 10.3, same sha256; the onnx package is not " \
           "importable here: pip3 install onnx to re-check)" in done.stdout
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    del manifest["tensorrt_lint"]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    done = _run_script(bundle_copy, "--dry-run", block_onnx=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith("build_engine: error: cannot lint model.onnx: the onnx package is not importable")
    assert "lint       skipped (--skip-lint)" in _run_script(bundle_copy, "--dry-run", "--skip-lint",
                                                            block_onnx=True).stdout


def test_script_refuses_a_graph_outside_the_matrix_before_building(bundle_copy):
    """An INT8 embedding in ONNX Runtime's form (Gather on INT8): refused on the device, exit 2."""
    model = onnx.load(str(bundle_copy / "model.onnx"))
    graph = model.graph
    dq = next(n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0].endswith("_dequantized"))
    gather = next(n for n in graph.node if n.op_type == "Gather" and n.input[0] == dq.output[0])
    gather.input[0] = dq.input[0]  # gather the INT8 rows directly ...
    cast = onnx.helper.make_node("Cast", [gather.output[0]], ["rows_f"], name="rows_cast", to=TensorProto.FLOAT)
    gather.output[0], cast.output[0] = "rows_i8", gather.output[0]
    cast.input[0] = "rows_i8"
    graph.node.insert(list(graph.node).index(gather) + 1, cast)  # ... and cast them (scales left out)
    graph.node.remove(dq)
    _replace_model(bundle_copy, model)
    before = (bundle_copy / "manifest.json").read_bytes()
    done = _run_script(bundle_copy, "--trtexec", sys.executable)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("build_engine: error: TensorRT lint: model.onnx is not accepted by TensorRT 10.3")
    assert f"node '{gather.name}' (Gather): input 0 '{dq.input[0]}' is INT8" in done.stderr
    assert not (bundle_copy / "model.engine").exists() and (bundle_copy / "manifest.json").read_bytes() == before
    # the host's record is for another file (sha256): without onnx the script will not vouch for this one
    done = _run_script(bundle_copy, "--dry-run", block_onnx=True)
    assert done.returncode == 2 and "holds no lint of this file" in done.stderr


def test_kit_lints_against_the_devices_release(int8_build):
    kit = load_kit(int8_build[0] / "build_engine.py")
    lint = kit.load_lint(int8_build[0])
    manifest = json.loads((int8_build[0] / "manifest.json").read_text())
    assert kit.lint_plan(lint, manifest, "10.3.0.30") == "10.3"
    assert kit.lint_plan(lint, manifest, "10.13.3") == "10.13"
    assert kit.lint_plan(lint, manifest, "10.16.0") == "10.16"
    assert kit.lint_plan(lint, manifest, None) == manifest["tensorrt_lint"]["tensorrt_version"]
    assert kit.load_lint(int8_build[0] / "nowhere") is None


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
    ort_form = {"precision": "int8", "backend": "onnxruntime", "quantization": {
        "mode": "static", "embedding_form": "gather_cast_mul"}}
    with pytest.raises(EdgesegError, match="--embedding-form dequantize_gather"):
        pipeline.stage_plan(ort_form, "int8", "jetson")
    assert pipeline.stage_plan(ort_form, "int8", "onnx") == []
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not list(tmp_path.glob(".a.build-*"))  # the work folder is removed on failure


def test_on_a_jetson_the_gpu_path_needs_tensorrt(monkeypatch):
    monkeypatch.setattr(trt_target, "import_tensorrt", lambda: None)
    with pytest.raises(EdgesegError, match="^TensorRT not found"):
        pipeline.preflight("jetson", "int8", False, jetson_probe=lambda: True)
    assert pipeline.preflight("jetson", "int8", False, jetson_probe=lambda: False) == {"on_jetson": False}
    with pytest.raises(EdgesegError, match="not available on Jetson"):
        trt_target.builder_options(hardware_compatible=True, on_jetson=True)


def test_a_graph_outside_the_matrix_stops_the_build_with_one_line(tiny_fp32, tmp_path):
    """An FP32 bundle whose graph holds an integer CumSum (listed for FP32/FP16/BF16 only)."""
    from edgeseg.bundle import bundle_writer, copy_files, finalize

    odd = tmp_path / "odd"
    manifest = verify_bundle(tiny_fp32)
    with bundle_writer(odd) as tmp:
        copy_files(tmp, tiny_fp32, manifest, include_model=False)
        model = onnx.load(str(tiny_fp32 / "model.onnx"))
        model.graph.initializer.append(numpy_helper.from_array(np.array(1, np.int64), "cumsum_axis"))
        model.graph.node.append(onnx.helper.make_node("CumSum", ["input_ids", "cumsum_axis"], ["seen"],
                                                      name="count_tokens"))
        onnx.save(model, str(tmp / "model.onnx"))
        finalize(tmp, {k: v for k, v in manifest.items() if k not in ("files", "model_data")})
    with pytest.raises(EdgesegError) as caught:
        pipeline.build("jetson", tmp_path / "out", bundle=odd, prompts=Prompts([]), facts={"on_jetson": False})
    message = str(caught.value)
    assert "\n" not in message and message.startswith("TensorRT lint: model.onnx is not accepted by TensorRT 10.3")
    assert "node 'count_tokens' (CumSum): input 0 'input_ids' is INT64; TensorRT 10.3 lists CumSum for FP32" in message
    assert not (tmp_path / "out").exists()
    with pytest.raises(EdgesegError, match="^--tensorrt-version 9.9: the kit has support matrices for 10.3, 10.13"):
        pipeline.build("jetson", tmp_path / "out", bundle=tiny_fp32, prompts=Prompts([]), facts={"on_jetson": False},
                       engine=pipeline.EngineOptions(tensorrt_version="9.9"))
    with pytest.raises(EdgesegError, match="^--tensorrt-version applies to --target gpu and jetson"):
        pipeline.preflight("onnx", "int8", True, tensorrt_version="10.3")


def test_cli_tensorrt_version_and_lint_failure_are_one_line_exit_2(tiny_fp32, tmp_path, capsys):
    from edgeseg.cli import main

    assert main(["build", "--target", "jetson", "--bundle", str(tiny_fp32), "--tensorrt-version", "8.6", "--out",
                 str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err == "edgeseg: error: --tensorrt-version 8.6: the kit has support matrices for 10.3, 10.13, 10.14, " \
                  "10.16\n"
    assert main(["build", "--target", "jetson", "--bundle", str(tiny_fp32), "--tensorrt-version", "10.16",
                 "--out", str(tmp_path / "b")]) == 0
    lint = verify_bundle(tmp_path / "b")["tensorrt_lint"]
    assert lint["tensorrt_version"] == "10.16" and lint["matrices"][0]["commit"].startswith("6bde6596")
    assert not (tmp_path / "a").exists()


def test_fp32_bundle_goes_straight_to_the_target(tiny_fp32, tmp_path):
    result = pipeline.build("jetson", tmp_path / "fp32", bundle=tiny_fp32, prompts=Prompts([]), max_batch=2,
                            facts={"on_jetson": False})
    manifest = verify_bundle(tmp_path / "fp32")
    assert manifest["precision"] == "fp32" and manifest["build"]["stages"] == ["jetson"]
    assert manifest["engine"]["verify_gate"] == {"mean_cosine": 0.9999, "worst_cosine": 0.999}
    assert manifest["host_check"]["max_abs_diff"] < 1e-4 and "FP32" in manifest["engine"]["network"]
    assert manifest["files"]["model.onnx"] == verify_bundle(tiny_fp32)["files"]["model.onnx"]
    assert [k for k, _ in result.rows][:2] == ["build", "bundle"]
