"""``--target gpu`` (TensorRT): the missing-TensorRT exit, and the pure logic (profiles, builder options,
CreateConfig kwargs, trtexec flags, comparison plumbing) with TensorRT absent.

A fake ``tensorrt`` module is injected only to test error branches and argument mapping; it never
builds or runs anything. ``test_real_engine`` builds a real engine and runs only where TensorRT and
an NVIDIA GPU are present.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import calibration_prompts
from test_encoders_mobileclip import tiny_student

from edgeseg.cli import main
from edgeseg.errors import EdgesegError
from edgeseg.export import export_bundle
from edgeseg.quantize import Gate
from edgeseg.targets import pipeline
from edgeseg.targets import tensorrt as trt_target
from edgeseg.targets.fp16 import fp16_bundle
from edgeseg.targets.jetson_kit import build_engine as kit

SOURCE = {"checkpoint": None, "checkpoint_sha256": "random", "seed": 0}
GPU = {"name": "Fake GPU", "compute_capability": "8.6", "cuda_driver_api": "12.6", "driver": None,
       "memory_bytes": 1}


def fake_tensorrt(version: str = "10.3.0", builder: bool = True) -> types.ModuleType:
    """A stand-in module with the few enums the argument mapping reads; it has no builder at all."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    if builder:
        trt.Builder = object
    trt.HardwareCompatibilityLevel = types.SimpleNamespace(NONE="NONE", AMPERE_PLUS="AMPERE_PLUS")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    return trt


def test_cli_gpu_without_tensorrt_is_one_line_and_exit_2(tmp_path, capsys):
    if kit.import_tensorrt() is not None:
        pytest.skip("TensorRT is installed here")
    code = main(["build", "--target", "gpu", "--encoder", "mobileclip-s0", "--out", str(tmp_path / "g")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("edgeseg: error: TensorRT not found: install ")
    assert err.rstrip().endswith("or use --target jetson to build on the device")
    assert not (tmp_path / "g").exists() and not list(tmp_path.iterdir())


def test_require_tensorrt_branches(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(builder=False))  # PyPI's stub: no libraries
    with pytest.raises(EdgesegError) as err:
        trt_target.require_tensorrt(gpu_probe=lambda: GPU)
    assert str(err.value) == trt_target.TENSORRT_MISSING
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("8.6.1"))
    with pytest.raises(EdgesegError, match="TensorRT 8.6.1 is too old"):
        trt_target.require_tensorrt(gpu_probe=lambda: GPU)
    fake = fake_tensorrt("10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    with pytest.raises(EdgesegError, match="^no NVIDIA GPU found.*--target jetson"):
        trt_target.require_tensorrt(gpu_probe=lambda: None)
    assert trt_target.require_tensorrt(gpu_probe=lambda: GPU) == (fake, GPU)


def test_builder_options_and_engine_section():
    options = trt_target.builder_options(True, True, 512, 3, gpu=GPU)
    assert options == {"strongly_typed": True, "tf32": False, "hardware_compatibility": "ampere_plus",
                       "version_compatible": True, "workspace_mib": 512, "builder_optimization_level": 3}
    with pytest.raises(EdgesegError, match="Ampere"):
        trt_target.builder_options(True, gpu={**GPU, "compute_capability": "7.5"})
    with pytest.raises(EdgesegError, match="0..5"):
        trt_target.builder_options(optimization_level=7)
    manifest = {"precision": "int8", "context_length": 32, "fidelity": {"gate": {"mean_cosine": 0.999,
                                                                                 "worst_cosine": 0.97}}}
    section = trt_target.engine_section(manifest, 16, options, built=True)
    assert section["profile"] == {"input_ids": {"min": [1, 32], "opt": [1, 32], "max": [16, 32]}}
    assert section["verify_gate"] == {"mean_cosine": 0.995, "worst_cosine": 0.97}  # default, lowered by the bundle
    assert "Q/DQ" in section["network"] and section["builder_options"] is options
    with pytest.raises(EdgesegError):
        trt_target.engine_section(manifest, 0, options, built=False)


def test_create_config_kwargs_map_the_plan():
    from polygraphy.backend.trt import CreateConfig

    trt = fake_tensorrt()
    plan = {"profile": kit.profile_shapes(16, 8), "builder_options": trt_target.builder_options(
        True, True, 256, 4, gpu=GPU)}
    kwargs = kit.config_kwargs(trt, plan, "/cache/timing.cache")
    (profile,) = kwargs["profiles"]
    shapes = profile["input_ids"]
    assert (tuple(shapes.min), tuple(shapes.opt), tuple(shapes.max)) == ((1, 16), (1, 16), (8, 16))
    assert kwargs["hardware_compatibility_level"] == "AMPERE_PLUS" and kwargs["version_compatible"] is True
    assert kwargs["memory_pool_limits"] == {"WORKSPACE": 256 << 20} and kwargs["builder_optimization_level"] == 4
    assert kwargs["load_timing_cache"] == "/cache/timing.cache" and kwargs["tf32"] is False
    assert not {"fp16", "int8", "bf16"} & set(kwargs)  # strongly typed: no precision flags
    config = CreateConfig(**kwargs)  # polygraphy accepts them (building needs TensorRT)
    assert config.version_compatible and config.timing_cache_path == "/cache/timing.cache"
    plain = kit.config_kwargs(trt, {"profile": kit.profile_shapes(16, 1), "builder_options":
                                    trt_target.builder_options()}, None)
    assert set(plain) == {"profiles", "tf32"}


def test_trtexec_command_matches_the_plan():
    plan = {"profile": kit.profile_shapes(16, 8), "builder_options": trt_target.builder_options(True, True, 64, 2)}
    cmd = kit.trtexec_build_command("/usr/src/tensorrt/bin/trtexec", Path("m.onnx"), Path("m.engine"), plan, "t.c")
    assert cmd[0] == "/usr/src/tensorrt/bin/trtexec"
    for flag in ("--onnx=m.onnx", "--saveEngine=m.engine", "--stronglyTyped", "--minShapes=input_ids:1x16",
                 "--optShapes=input_ids:1x16", "--maxShapes=input_ids:8x16", "--timingCacheFile=t.c",
                 "--hardwareCompatibilityLevel=ampere+", "--versionCompatible", "--memPoolSize=workspace:64M",
                 "--builderOptimizationLevel=2", "--noTF32"):
        assert flag in cmd
    assert not [c for c in cmd if c in ("--fp16", "--int8", "--best")]


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("trt_pair")
    export_bundle(tiny_student(["repmixer", "transformer"], seed=5), root / "fp32",
                  ["a dog", "wow!$ sign", "", "two cats on a sofa", "traffic light"], SOURCE)
    fp16_bundle(root / "fp32", root / "fp16", calibration_prompts()[::500][:32], Gate(0.999, 0.99))
    return root / "fp32", root / "fp16"


def test_compare_runners_plumbing_with_onnxruntime_stand_ins(tiny_pair):
    """Comparator plumbing only: two ONNX Runtime runners (FP16 vs FP32 graph) stand in for engine vs ORT."""
    from edgeseg.bundle import load_reference

    fp32, fp16 = tiny_pair
    reference = load_reference(fp32)
    feeds = trt_target.reference_feeds(reference["input_ids"], 2)
    assert [f["input_ids"].shape[0] for f in feeds] == [2, 2, 1] and feeds[0]["input_ids"].dtype == np.int64
    runners = [trt_target.ort_runner(fp16 / "model.onnx", "fp16-graph"), trt_target.ort_runner(fp32 / "model.onnx")]
    result = trt_target.compare_runners(runners, feeds, "fp16")
    assert result["passed"] and result["mask_equal"] and result["runners"] == ["fp16-graph", "onnxruntime"]
    assert result["tolerances"] == {"memory": trt_target.COMPARE_TOLERANCES["fp16"], "mask": "exact"}
    memory, mask = result["outputs"]["fp16-graph"]
    assert memory.shape == reference["memory"].shape and np.array_equal(mask, reference["mask"])
    assert 0 < result["max_abs_diff"] < 0.05
    strict = trt_target.compare_runners(runners, feeds, "fp32")  # max error <= 1e-3: FP16 rounding exceeds it
    assert not strict["passed"] and strict["max_abs_diff"] > trt_target.COMPARE_TOLERANCES["fp32"]["atol"]


def test_runtime_runner_without_tensorrt(tiny_pair, monkeypatch):
    from edgeseg.bundle import verify_bundle
    from edgeseg.runtime.tensorrt import TensorRTRunner

    monkeypatch.setattr(trt_target, "import_tensorrt", lambda: None)
    runner = TensorRTRunner(tiny_pair[0], verify_bundle(tiny_pair[0]))
    with pytest.raises(EdgesegError, match="^TensorRT not found"):
        runner.activate()


def _has_gpu() -> bool:
    return kit.gpu_info() is not None


def test_real_engine(tiny_pair, tmp_path):
    """Builds and runs a real TensorRT engine: only where TensorRT 10+ and an NVIDIA GPU exist."""
    trt = pytest.importorskip("tensorrt")
    if not hasattr(trt, "Builder") or not _has_gpu():
        pytest.skip("needs TensorRT with its libraries and an NVIDIA GPU")
    from edgeseg.bundle import verify_bundle
    from edgeseg.runtime.tensorrt import TensorRTRunner

    out = tmp_path / "gpu"
    result = pipeline.build("gpu", out, bundle=tiny_pair[1], prompts=pipeline.Prompts([]), max_batch=4,
                            engine=pipeline.EngineOptions(timing_cache=str(tmp_path / "timing.cache")))
    manifest = verify_bundle(out)
    assert manifest["backend"] == "tensorrt" and manifest["model"] == "model.engine" == result.manifest["model"]
    stamps = manifest["tensorrt"]
    assert stamps["version"] == trt.__version__ and stamps["gpu"]["compute_capability"]
    assert stamps["comparison"]["passed"] and stamps["verification"]["passed"]
    assert manifest["engine"]["profile"]["input_ids"]["max"] == [4, 16]
    with TensorRTRunner(out, manifest) as runner:
        assert runner.self_check()["mean_cosine"] >= manifest["engine"]["verify_gate"]["mean_cosine"]


def test_engine_weight_estimate_counts_by_the_stated_assumption(tmp_path):
    """Hand count on a graph with one of each kind: INT8 weight into MatMul (stays INT8), INT8 table into
    Gather (assumed folded to its FP32 scale type), a float bias, and the int64 shape-like constant."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    arrays = {"w_q": np.zeros((8, 6), np.int8), "w_s": np.ones(6, np.float32), "w_z": np.zeros(6, np.int8),
              "t_q": np.zeros((50, 8), np.int8), "t_s": np.ones(50, np.float32), "t_z": np.zeros(50, np.int8),
              "bias": np.zeros(6, np.float32), "axes": np.array([0], np.int64)}
    nodes = [helper.make_node("DequantizeLinear", ["t_q", "t_s", "t_z"], ["table"], axis=0),
             helper.make_node("Gather", ["table", "ids"], ["rows"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], axis=1),
             helper.make_node("MatMul", ["rows", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "bias"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6])],
                              initializer=[numpy_helper.from_array(a, n) for n, a in arrays.items()])
    onnx.save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    estimate = trt_target.engine_weight_estimate(tmp_path / "m.onnx")
    assert estimate["by_kind"] == {"int8_fused": 8 * 6, "dequantized_to_float": 50 * 8 * 4,
                                   "float": 6 * 4 + 50 * 4 + 6 * 4, "other": 50 + 6 + 8}
    assert estimate["expected_engine_weight_bytes"] == 48 + 1600 + 248 + 64
    assert estimate["if_dequantize_not_folded_bytes"] == 48 + 400 + 248 + 64
    sizes = trt_target.size_figures(tmp_path, "m.onnx")
    assert sizes["bundle_bytes"] == (tmp_path / "m.onnx").stat().st_size
