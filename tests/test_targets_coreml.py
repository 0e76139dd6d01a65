"""``--target coreml``: the ML program's spec (I/O names, dtypes, shapes, deployment target, ops, 8-bit
weights, size), the bundle, the stored-weight emulation, and the <= 50 MB S0 INT8 package.

coremltools converts on Linux but cannot run a model there; prediction is tested on macOS only.
"""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
from test_encoders_mobileclip import tiny_student

from edgeseg.bundle import load_reference, verify_bundle
from edgeseg.cli import main
from edgeseg.errors import EdgesegError
from edgeseg.targets import pipeline

ct = pytest.importorskip("coremltools", reason="coremltools is not installed (pip install coremltools)")

from edgeseg.targets import coreml  # noqa: E402

SOURCE = {"checkpoint": None, "checkpoint_sha256": "random", "seed": 0}
REFERENCE = ["a dog", "wow!$ sign", "the leftmost child wearing blue vest", "", "two cats on a sofa"]
MAX_BATCH = 3
BANK_PROMPTS = ["a dog", "A Dog", "forklift", "pallet", "a player in white " * 6]


@pytest.fixture(scope="module")
def tiny():
    return tiny_student(["repmixer", "transformer", "repmixer"], seed=2)


@pytest.fixture(scope="module", params=["fp16", "int8"])
def built(request, tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"coreml_{request.param}") / "bundle"
    bank = BANK_PROMPTS if request.param == "fp16" else None  # the fp16 bundle also ships a prompt bank
    result = pipeline.build("coreml", out, model=tiny, precision=request.param, source=SOURCE, max_batch=MAX_BATCH,
                            prompts=pipeline.Prompts(REFERENCE, bank=bank))
    return request.param, out, result


def test_spec_matches_the_contract(built):
    precision, out, _ = built
    facts = coreml.inspect_package(out / "model.mlpackage")
    assert coreml.check_spec(facts, 16, MAX_BATCH, precision) == []
    assert facts["model_type"] == "mlProgram" and facts["spec_version"] >= coreml.SPEC_VERSION_IOS17
    (ids,) = facts["inputs"]
    assert (ids["name"], ids["dtype"]) == ("input_ids", "int32")
    assert sorted(ids["enumerated"]) == [[1, 16], [2, 16], [3, 16]]
    assert [(o["name"], o["dtype"]) for o in facts["outputs"]] == [("memory", "float32"), ("mask", "int32")]
    assert facts["output_shapes"] == {"memory": ["batch", 16, 256], "mask": ["batch", 16]}
    assert facts["batch_pinned_reshapes"] == 0
    for op in ("gather", "layer_norm", "softmax", "linear", "equal"):
        assert facts["ops"].get(op), op
    if precision == "int8":
        assert facts["quantized_weights"] >= 9
        assert any("embedding" in name for name in facts["quantized_tensors"])  # the 49408-row table too
        assert facts["quantized_elements"] >= 49408 * 128
    else:
        assert facts["quantized_weights"] == 0


def test_bundle_manifest(built, tiny):
    precision, out, result = built
    manifest = verify_bundle(out)
    assert manifest == result.manifest
    assert (manifest["target"], manifest["backend"], manifest["precision"]) == ("coreml", "coreml", precision)
    assert manifest["model"] == "model.mlpackage/Manifest.json" and manifest["coreml"]["package"] == "model.mlpackage"
    assert any(name.startswith("model.mlpackage/Data/") for name in manifest["files"])
    assert manifest["inputs"] == [{"name": "input_ids", "dtype": "int32", "shape": ["batch", 16]}]
    assert [(o["name"], o["dtype"], o["shape"]) for o in manifest["outputs"]] == [
        ("memory", "float32", ["batch", 16, 256]), ("mask", "int32", ["batch", 16])]
    info = manifest["coreml"]
    assert info["compute_units"] == "CPU_AND_NE" and info["minimum_deployment_target"] == "iOS17 / macOS14"
    assert info["compute_precision"] == "float16" and info["batch_sizes"] == [1, 2, 3]
    emulated = manifest["fidelity"]["emulated_weights"]
    assert emulated["mean_cosine"] > (0.999 if precision == "int8" else 0.99999)
    reference = load_reference(out, manifest)
    assert reference["input_ids"].shape == (len(REFERENCE), 16)
    assert np.array_equal(reference["mask"], reference["input_ids"] == 0)
    assert manifest["build"]["stages"] == ["coreml"]


def test_weights_are_stored_at_their_precision(built, tiny):
    precision, out, _ = built
    facts = coreml.inspect_package(out / "model.mlpackage")
    params = tiny.num_parameters(include_unused=False)
    if precision == "int8":
        assert facts["weights_bytes"] < 1.2 * params  # about one byte per weight (+ scales, small FP16 ones)
    else:
        assert 1.9 * params < facts["weights_bytes"] < 2.2 * params  # two bytes per weight


def test_check_spec_reports_problems(built):
    precision, out, _ = built
    facts = coreml.inspect_package(out / "model.mlpackage")
    bad = copy.deepcopy(facts)
    bad["inputs"][0]["dtype"] = "float32"
    bad["outputs"][1]["dtype"] = "float32"
    bad["spec_version"] = 7
    bad["batch_pinned_reshapes"] = 2
    problems = coreml.check_spec(bad, 16, MAX_BATCH, precision)
    assert len(problems) == 4
    assert coreml.check_spec(facts, 16, MAX_BATCH + 1, precision)  # wrong batch range
    assert coreml.check_spec(facts, 16, MAX_BATCH, "int8" if precision == "fp16" else "fp16")


def test_errors(tmp_path, tiny, monkeypatch):
    with pytest.raises(EdgesegError, match="use it with --precision int8"):
        pipeline.build("coreml", tmp_path / "w", model=tiny, precision="fp16", prompts=pipeline.Prompts(REFERENCE),
                       w8a8=True)
    with pytest.raises(EdgesegError, match="needs calibration prompts"):
        pipeline.build("coreml", tmp_path / "w", model=tiny, precision="int8", prompts=pipeline.Prompts(REFERENCE),
                       w8a8=True)
    with pytest.raises(EdgesegError, match="give --encoder"):
        pipeline.preflight("coreml", "int8", from_bundle=True)
    with pytest.raises(EdgesegError, match="coreml only"):
        pipeline.preflight("onnx", "int8", from_bundle=False, w8a8=True)
    with pytest.raises(EdgesegError, match="N <= 64"):
        coreml.batch_sizes(65)
    monkeypatch.setitem(sys.modules, "coremltools", None)
    with pytest.raises(EdgesegError, match=r"^--target coreml needs the coreml extra: pip install 'edgeseg\[coreml\]'"):
        coreml.require_coremltools()
    assert not list(tmp_path.iterdir())


def test_cli_coreml_from_bundle_is_refused(tmp_path, capsys):
    assert main(["build", "--target", "coreml", "--bundle", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "edgeseg: error: --target coreml converts the torch encoder" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs here")
def test_runtime_runner_refuses_off_macos(built):
    from edgeseg.runtime.coreml import CoreMLRunner

    _, out, _ = built
    with pytest.raises(EdgesegError, match="macOS 14"):
        CoreMLRunner(out, verify_bundle(out)).activate()


@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML predicts on macOS only")
def test_macos_prediction_matches_reference(built):
    from edgeseg.runtime.coreml import CoreMLRunner

    precision, out, _ = built
    manifest = verify_bundle(out)
    assert manifest["fidelity"]["coreml"]["passed"]
    with CoreMLRunner(out, manifest) as runner:
        fid = runner.self_check()
    assert fid["mean_cosine"] >= coreml.PREDICT_GATES[precision][0]


def test_mobileclip_s0_int8_package_is_at_most_50_mb(tmp_path):
    """The full-size S0 (random weights; size does not depend on them), converted once."""
    from edgeseg.encoders import build_encoder

    model = build_encoder("mobileclip-s0")
    manifest, rows = coreml.coreml_bundle(model, tmp_path / "s0", "int8", 8, REFERENCE, SOURCE)
    facts = coreml.inspect_package(tmp_path / "s0" / "model.mlpackage")
    assert coreml.check_spec(facts, 16, 8, "int8") == []
    assert facts["bytes"] <= 50e6, f"{facts['bytes'] / 1e6:.1f} MB"
    assert facts["quantized_elements"] >= 0.95 * model.num_parameters(include_unused=False)
    assert manifest["coreml"]["package_bytes"] == facts["bytes"]
    assert manifest["fidelity"]["emulated_weights"]["mean_cosine"] > 0.999


def test_w8a8_bundle(tiny, tmp_path):
    """--w8a8: activation quantize/dequantize pairs in the package, calibration and ops kept float in the
    manifest, the program's float32 emulation through the W8A8 gate, and it differs from weights-only int8."""
    from edgeseg.corpus import load_split

    prompts = pipeline.Prompts(REFERENCE, calibration=load_split("calibration")[:40], calibration_name="cal40",
                               evaluation=load_split("eval")[:24])
    out = tmp_path / "w8a8"
    result = pipeline.build("coreml", out, model=tiny, precision="int8", prompts=prompts, source=SOURCE,
                            max_batch=MAX_BATCH, w8a8=True)
    manifest = verify_bundle(out)
    facts = coreml.inspect_package(out / "model.mlpackage")
    assert coreml.check_spec(facts, 16, MAX_BATCH, "int8", w8a8=True) == []
    count = facts["ops"]["quantize"]
    assert coreml.check_spec(facts, 16, MAX_BATCH, "int8") == [f"{count} activation quantize op(s) in a package "
                                                               "built without --w8a8"]
    assert facts["ops"]["quantize"] >= 3 and facts["ops"]["dequantize"] >= 3
    assert manifest["coreml"]["w8a8"] is True and "W8A8" in manifest["coreml"]["activations"]
    assert manifest["calibration"]["name"] == "cal40" and manifest["calibration"]["count"] == 40
    assert manifest["excluded_layers"] == manifest["coreml"]["float_activation_ops"]
    fid = manifest["fidelity"]["mil_emulation"]
    assert fid["prompts"] == 24 and fid["mean_cosine"] >= fid["gate"]["mean_cosine"]
    assert any("W8A8" in value for _, value in result.rows)
    # the same encoder with 8-bit weights only: its emulation is not the W8A8 one
    int8 = pipeline.build("coreml", tmp_path / "int8", model=tiny, precision="int8", prompts=prompts, source=SOURCE,
                          max_batch=MAX_BATCH)
    assert int8.manifest["fidelity"]["mil_emulation"]["mean_cosine"] != fid["mean_cosine"]
    assert "quantize" not in coreml.inspect_package(tmp_path / "int8" / "model.mlpackage")["ops"]


def test_cli_w8a8_implies_int8_and_refuses_other_precisions(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_build(target, out, **kwargs):
        seen.update(target=target, precision=kwargs["precision"], w8a8=kwargs["w8a8"])
        return pipeline.BuildResult({}, [("build", "fake")])

    monkeypatch.setattr(pipeline, "build", fake_build)
    assert main(["build", "--target", "coreml", "--encoder", "mobileclip-s0", "--w8a8", "--out",
                 str(tmp_path / "a")]) == 0
    assert seen == {"target": "coreml", "precision": "int8", "w8a8": True}
    capsys.readouterr()
    assert main(["build", "--target", "coreml", "--encoder", "mobileclip-s0", "--w8a8", "--precision", "fp16",
                 "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["edgeseg: error: --w8a8 quantizes activations on top of 8-bit weights: use it with --precision "
                   "int8"]
    assert not (tmp_path / "b").exists()


def test_bundle_ships_a_prompt_bank(built, tiny):
    """``--bank-prompts``: the bank beside the package holds what the package computes (its MIL program here;
    Core ML itself on macOS), is bound to the package, and the C++ runtime serves it with no model
    (tokenizer_only), as an iOS app beside the package would (Python == C++, bit for bit)."""
    precision, out, result = built
    if precision != "fp16":
        assert "bank" not in result.manifest
        return
    import torch
    from test_engines import LIBRARY, CppRuntime

    from edgeseg.runtime import load
    from edgeseg.targets import mil
    from edgeseg.tokenizer import get_tokenizer

    entry = result.manifest["bank"]
    assert (entry["file"], entry["prompts"], entry["entries"]) == ("bank.safetensors", 5, 4)
    runner = load(out, activate=False)  # Core ML cannot run here: the bank is attached and bound anyway
    ids = get_tokenizer()(["a dog", "forklift", "pallet", "a player in white " * 6], 16).ids
    np.testing.assert_array_equal(runner.bank.ids, ids)
    if sys.platform != "darwin":
        program_memory, _ = mil.evaluate_batches(mil.load_program(out / "model.mlpackage"), ids, 16)
        np.testing.assert_array_equal(runner.bank.memory, program_memory)
    with torch.no_grad():
        reference = tiny(torch.from_numpy(ids))[0].numpy()
    np.testing.assert_allclose(runner.bank.memory, reference, atol=5e-2)  # FP16 weights
    with pytest.raises(EdgesegError, match="--bank-prompts applies to --target coreml"):
        pipeline.preflight("onnx", "int8", False, bank=True)
    if LIBRARY.is_file():
        cpp = CppRuntime(out, tokenizer_only=True)
        np.testing.assert_array_equal(cpp.encode(BANK_PROMPTS)[2], runner.bank.take([0, 0, 1, 2, 3])[0])
        cpp.close()
