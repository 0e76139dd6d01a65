"""The measuring machinery of edgeseg bench, on hand-made inputs: block timing on a fake clock, ratios and
efficiency from known numbers, psutil memory of a child that allocates a known amount, bars, the one MAC
counter (torch vs ONNX FP32 / INT8 graphs), polygraphy adapters, the ORT runner's recorded session
options, run_suite and device_check on a machine without a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import calibration_prompts
from test_encoders_mobileclip import S0_BLOCKS, tiny_student
from test_export import tiny_exported_bundle, tiny_teacher

from edgeseg.bench import bars, gemm, latency, memory
from edgeseg.bench.latency import Candidate, Clock

ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    """Time advances only when a model is called (by the duration the test gives it) or sleeps."""

    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


def model(clock: FakeClock, log: list[str], key: str, first_s: float, steady_s: float):
    """A call that takes ``first_s`` when another model ran last (its caches evicted), else ``steady_s``."""
    def call() -> None:
        clock.t += first_s if (not log or log[-1] != key) else steady_s
        log.append(key)
    return call


def test_blocks_rotate_exclude_warmup_and_time_the_first_call_apart():
    clock, log = FakeClock(), []
    cands = [Candidate(k, k, 16, {1: model(clock, log, k, first, steady)})
             for k, first, steady in (("a", 0.050, 0.010), ("b", 0.300, 0.150), ("c", 0.030, 0.001))]
    out = latency.block_latency(cands, [1], rounds=3, warmup=2, block_s=0.1, min_calls=2, max_calls=50, pause_s=0.1,
                                clock=Clock(clock.now, clock.sleep))
    # order rotated each round: every model leads once over three rounds
    assert out["order"] == [["a@1", "b@1", "c@1"], ["b@1", "c@1", "a@1"], ["c@1", "a@1", "b@1"]]
    rows = out["batches"]["1"]
    # sizing pass: the first call of each block is a switch, the timed ones are steady
    assert [rows[k]["calls_per_block"] for k in "abc"] == [10, 2, 50]  # 0.1 s / 0.010, min 2, max 50
    for key, first, steady in (("a", 50, 10), ("b", 300, 150), ("c", 30, 1)):
        row = rows[key]
        assert row["samples"] == 3 * row["calls_per_block"]  # warm-up calls are not samples
        assert row["p50_ms"] == pytest.approx(steady) and row["max_ms"] == pytest.approx(steady)
        assert row["first_call_after_switch"]["p50_ms"] == pytest.approx(first)
        assert row["first_call_after_switch"]["samples"] == 3
        assert row["first_call_vs_steady"] == pytest.approx(first / steady)
    # one 100 ms pause before each timed block (3 rounds x 3 models), none in the sizing pass
    assert clock.sleeps.count(0.1) == 9
    per_block = 1 + 2 + rows["a"]["calls_per_block"]  # first + warm-up + timed calls
    assert log.count("a") == 1 + 2 + 1 + 3 * per_block  # sizing: first + warm-up + one timed
    # a slow model's warm-up stops once it has taken block_s (at least one call): b's calls take 0.15 s
    assert log.count("b") == 1 + 1 + 1 + 3 * (1 + 1 + rows["b"]["calls_per_block"])


def test_ratios_against_both_baselines_from_hand_made_p50s():
    table = {"1": {"sam3-fp32": {"p50_ms": 600.0}, "sam3-fp32-dyn": {"p50_ms": 150.0}, "s0": {"p50_ms": 7.5}}}
    latency.add_ratios(table, "sam3-fp32", "speedup_vs_fixed")
    latency.add_ratios(table, "sam3-fp32-dyn", "speedup_vs_dynamic")
    assert table["1"]["s0"]["speedup_vs_fixed"] == 80.0 and table["1"]["s0"]["speedup_vs_dynamic"] == 20.0
    assert table["1"]["sam3-fp32-dyn"]["speedup_vs_fixed"] == 4.0


def test_efficiency_against_a_hand_made_gemm_floor():
    from edgeseg.bench.models import Model
    from edgeseg.bench.phases import Run, efficiency_phase

    teacher = tiny_teacher()
    # by hand: every nn.Linear, plus the attention in-projections (raw [3w, w] parameters)
    per_token = sum(m.in_features * m.out_features for m in teacher.modules() if isinstance(m, torch.nn.Linear))
    per_token += sum(p.numel() for n, p in teacher.named_parameters() if n.endswith("in_proj_weight"))
    calls: list[tuple] = []

    def measure(m, k, n, threads, backends):
        calls.append((m, k, n, tuple(backends)))
        return {b: {"gmac_per_s": 2.0, "median_us": 1.0} for b in backends}

    fake = Model("sam3-fp32", {}, 32, None, None, None, torch_model=teacher, kernel="torch-fp32")
    run = Run(SimpleNamespace(threads=1, gemm_measure=measure), {"sam3-fp32": fake}, [], None,
              {"latency": {"batches": {"1": {"sam3-fp32": {"tokens": 6, "p50_ms": 4.0}},
                                       "8": {"sam3-fp32": {"tokens": 9, "p50_ms": 20.0}}}}})
    out = efficiency_phase(run)["batches"]
    counted = gemm.count(gemm.torch_matrices(teacher))
    assert counted["macs_per_token"] == per_token
    one = out["1"]["sam3-fp32"]
    assert one["macs_per_call"] == counted["macs_per_token"] * 6 and one["shape"]["m"] == 6
    assert one["floor_ms"] == pytest.approx(one["macs_per_call"] / 2e9 * 1e3)
    assert one["efficiency"] == pytest.approx(one["floor_ms"] / 4.0)
    assert out["8"]["sam3-fp32"]["macs_per_call"] == counted["macs_per_token"] * 72
    assert [c[0] for c in calls] == [6, 72] and all(c[3] == ("torch-fp32",) for c in calls)


def test_one_mac_counter_for_torch_and_onnx_fp32_and_int8(tmp_path_factory):
    from edgeseg.export import inference_copy
    from edgeseg.quantize import Gate, quantize_bundle

    student, bundle, _ = tiny_exported_bundle(tmp_path_factory)
    expected = 0
    for module in inference_copy(student).modules():  # by hand: Linear and 1x1 convolutions
        if isinstance(module, torch.nn.Linear):
            expected += module.in_features * module.out_features
        elif isinstance(module, torch.nn.Conv2d) and module.groups == 1 and module.kernel_size == (1, 1):
            expected += module.in_channels * module.out_channels
    assert gemm.count(gemm.torch_matrices(inference_copy(student)))["macs_per_token"] == expected
    assert gemm.count(gemm.onnx_matrices(bundle / "model.onnx"))["macs_per_token"] == expected
    root = tmp_path_factory.mktemp("macs")
    prompts = calibration_prompts()
    for mode in ("static", "dynamic"):
        quantize_bundle(bundle, root / mode, prompts[::400][:32], prompts[7::900][:8], mode=mode, gate=Gate(0.0, 0.0))
        assert gemm.count(gemm.onnx_matrices(root / mode / "model.onnx"))["macs_per_token"] == expected, mode
    distill = _load_script("distill_bench")
    assert distill.weight_macs_per_token(inference_copy(student)) == expected


def _load_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gemm_rates_measure_every_kind():
    rates = gemm.gemm_rates(8, 32, 16, 1, rounds=1, calls=2, gap_s=0.0)
    assert set(rates) == set(gemm.BACKENDS) and all(r["gmac_per_s"] > 0 for r in rates.values())


ALLOCATE = r"""
import json, sys, time
import psutil
block = bytearray(int(sys.argv[1]) * 1024 * 1024)
for i in range(0, len(block), 4096):
    block[i] = 1  # touch every page so it is resident
time.sleep(0.3)
print(json.dumps({"self_rss_bytes": psutil.Process().memory_info().rss}))
"""


def test_psutil_reads_the_peak_of_a_child_that_allocates_a_known_amount():
    base = memory.run_measured([sys.executable, "-c", ALLOCATE, "0"])
    big = memory.run_measured([sys.executable, "-c", ALLOCATE, "200"])
    assert base["returncode"] == big["returncode"] == 0
    grown = big["peak_rss_bytes"] - base["peak_rss_bytes"]
    assert 200 * 2**20 * 0.95 <= grown <= 200 * 2**20 * 1.10
    assert big["sampled_peak_rss_bytes"] >= 200 * 2**20  # the parent's samples saw it, not only the child
    assert "psutil" in big["measured_with"]


def test_bars_from_hand_made_results():
    results = {"memory": {"static": {"a": {"bundle_bytes": 44_080_000}, "b": {"bundle_bytes": 46_000_000}}},
               "latency": {"batches": {"1": {"t": {"p50_ms": 600.0}, "a": {"p50_ms": 10.0}, "b": {"p50_ms": 5.0}}}},
               "flag": {"imported": False}}
    specs = [
        {"bar": "size {key}", "value": "memory.static.{key}.bundle_bytes", "over": ["a"], "scale": 1e-6, "op": "<=",
         "target": 45, "format": "{:.2f} MB"},
        {"bar": "best speed-up", "value": "latency.batches.1.{key}.p50_ms", "reference": "latency.batches.1.t.p50_ms",
         "over": ["a", "b"], "pick": "max", "op": ">=", "target": 150},
        {"bar": "torch not imported", "value": "flag.imported", "op": "==", "target": 0},
        {"bar": "missing", "value": "memory.static.c.bundle_bytes", "op": "<=", "target": 1},
        {"bar": "info", "value": "memory.static.b.bundle_bytes", "scale": 1e-6, "op": "<=", "target": 45,
         "informational": True},
    ]
    out = bars.evaluate(specs, results)
    assert out[0]["bar"] == "size a" and out[0]["measured_text"] == "44.08 MB" and out[0]["passed"] is True
    assert out[1]["which"] == "b" and out[1]["measured"] == 120.0 and out[1]["passed"] is False
    assert out[2]["passed"] is True and out[3]["passed"] is None and out[3]["measured_text"] == "n/a"
    assert out[4]["passed"] is False and bars.failed(out) == ["best speed-up"]
    with pytest.raises(ValueError, match="unknown op"):
        bars.check({"bar": "x", "value": "a", "op": "~", "target": 1}, results)


def test_polygraphy_comparator_compares_a_bundle_with_its_torch_model_and_a_teacher(tmp_path_factory):
    from edgeseg.bench.polygraphy_runners import BundleRunner, TorchEncoderRunner, compare
    from edgeseg.export import inference_copy

    student, bundle, _ = tiny_exported_bundle(tmp_path_factory)
    prompts = ["a dog", "wow!$ sign", "the leftmost child wearing blue vest", ""]
    same = compare([BundleRunner(bundle), TorchEncoderRunner(inference_copy(student))], prompts, atol=1e-4)
    assert same["passed"] and same["against"][f"{student.name}-torch"]["max_abs_diff"] < 1e-4
    other = tiny_student(S0_BLOCKS, seed=5)
    different = compare([BundleRunner(bundle), TorchEncoderRunner(other, name="other")], prompts, atol=1e-4)
    assert not different["passed"] and different["against"]["other"]["max_abs_diff"] > 1e-2
    # different context lengths (teacher 32, student 16) compare on the first 16 positions
    mixed = compare([BundleRunner(bundle, compare_length=16),
                     TorchEncoderRunner(tiny_teacher(), compare_length=16, name="teacher")], prompts, atol=1e9)
    assert mixed["passed"] and mixed["prompts"] == 4


def test_ort_runner_honours_recorded_session_options_and_max_batch(tmp_path_factory, monkeypatch):
    import edgeseg.runtime
    from edgeseg.bundle import finalize, inherited, verify_bundle
    from edgeseg.errors import EdgesegError
    from edgeseg.runtime.onnxruntime import SESSION_OPTIONS

    _, bundle, _ = tiny_exported_bundle(tmp_path_factory)
    out = tmp_path_factory.mktemp("ortopts") / "b"
    import shutil

    shutil.copytree(bundle, out)
    manifest = inherited(verify_bundle(out))
    manifest["onnxruntime"] = {"session_options": {**SESSION_OPTIONS, "intra_op_num_threads": 1,
                                                   "graph_optimization_level": "ORT_ENABLE_BASIC",
                                                   "enable_mem_pattern": True},
                               "providers": ["CPUExecutionProvider"], "max_batch": 2}
    finalize(out, manifest)
    with edgeseg.runtime.load(out) as runner:
        options = runner.session.get_session_options()
        assert options.intra_op_num_threads == 1 and options.enable_mem_pattern
        assert str(options.graph_optimization_level).endswith("ORT_ENABLE_BASIC")
        seen = []
        run = runner.session.run
        monkeypatch.setattr(runner, "session", type("S", (), {"run": lambda self, o, f: (
            seen.append(f["input_ids"].shape[0]) or run(o, f))})())
        memory_out, mask = runner.infer(runner.tokenizer(["a", "b", "c", "d", "e"], 16).ids)
        assert seen == [2, 2, 1] and memory_out.shape[0] == 5 and mask.shape == (5, 16)
    with edgeseg.runtime.load(out, threads=2) as runner:  # the caller's thread count wins
        assert runner.session.get_session_options().intra_op_num_threads == 2
    manifest["onnxruntime"]["session_options"]["bogus"] = 1
    finalize(out, manifest)
    with pytest.raises(EdgesegError, match="bogus"):
        edgeseg.runtime.load(out)


def test_run_suite_dry_run_lists_fresh_builds_and_the_bench_command(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/run_suite.py"), "int8", "--dry-run", "--work",
                           str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("run_suite: ")]
    suite = json.loads((ROOT / "benchmarks/suites/int8.json").read_text(encoding="utf-8"))
    assert len(lines) == len(suite["bundles"]) + 1 and "reusing" not in proc.stderr
    assert "--dynamic-length" in lines[2] and "--bars" in lines[-1] and "--suite-run" in lines[-1]
    for key in suite["bundles"]:
        assert str(tmp_path / "int8" / key) in lines[-1]


def test_every_suite_bar_names_a_figure_the_bench_writes():
    """Suite bars are data: each path must start at a section edgeseg bench writes."""
    sections = {"latency", "efficiency", "memory", "accuracy", "fidelity", "segmentation"}
    for path in sorted((ROOT / "benchmarks/suites").glob("*.json")):
        suite = json.loads(path.read_text(encoding="utf-8"))
        for spec in suite["bars"]:
            assert spec["value"].split(".")[0] in sections, (path.name, spec["bar"])
            assert spec.get("op", "<=") in bars.OPS


def test_device_check_stops_with_no_gpu_and_exit_0(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": "", "EDGESEG_PYTHON": sys.executable,
           "HOME": str(tmp_path)}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/device_check.sh"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no GPU" in proc.stdout + proc.stderr
    assert not np.any([p.name == "results.json" for p in tmp_path.rglob("*")])


def test_accuracy_retrieval_counts_ties_against_the_prompt():
    """A candidate whose outputs carry nothing cannot retrieve: all-zero memory ties with every reference."""
    from edgeseg.bench.accuracy import compare
    from edgeseg.outputs import Encoded

    rng = np.random.default_rng(0)
    mask = np.zeros((6, 4), bool)
    mask[:, 3] = True
    teacher = Encoded(np.ones((6, 4), np.int64), mask, rng.normal(size=(6, 4, 8)).astype(np.float32))
    zeros = Encoded(teacher.input_ids, mask, np.zeros((6, 4, 8), np.float32))
    got = compare(zeros, teacher)  # every similarity is 0: each prompt ties with all 6 references, ranks last
    assert got["retrieval_top1"] == 0.0 and got["retrieval_chance"] == 1 / 6
    constant = compare(Encoded(teacher.input_ids, mask, np.ones((6, 4, 8), np.float32)), teacher)
    assert constant["retrieval_top1"] <= 1 / 6  # one direction for all prompts: at most the luck of one prompt
    same = compare(teacher, teacher)
    assert same["retrieval_top1"] == 1.0 and same["pooled_cosine_mean"] == pytest.approx(1.0)
