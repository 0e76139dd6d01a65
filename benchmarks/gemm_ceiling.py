"""How fast can S0 INT8 be here? Multiply-accumulate counts and this CPU's measured GEMM throughput.

The encoders' time goes to weight-bearing matrix products (MatMul/Gemm with a weight initializer).
This script counts their multiply-accumulates (MACs) per batch-1 call from each bundle's ONNX graph
(at the bundle's context length) and measures, on this machine with the same thread count, the
throughput of one such product at each model's dominant shape: FP32 in ONNX Runtime and in torch, and
INT8 the two ways ONNX Runtime runs S0's INT8 bundles (static Q/DQ -> MatMulIntegerToFloat, dynamic ->
DynamicQuantizeMatMul). Together they estimate the latency ratio a benchmark can show:

    estimate = (teacher MACs / teacher FP32 GMAC/s) / (S0 MACs / S0 INT8 GMAC/s)

i.e. what the ratio would be if every product ran at the measured rate and nothing else took time
(single-product rates are noisy on a shared 2-core VM: read the estimate to within ~30%).
Attention score products and depthwise convolutions are not counted (< 1% of the MACs here).

    python benchmarks/gemm_ceiling.py --teacher WORK/sam3-fp32 --student WORK/s0-fp32 [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def weight_macs(bundle: Path) -> dict[str, Any]:
    """MACs of the weight-bearing MatMul/Gemm nodes for one batch-1 call, from the graph (no weights read)."""
    import onnx

    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    model = onnx.load(str(bundle / manifest["model"]), load_external_data=False)
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    length = int(manifest["context_length"])
    per_token, shapes = 0, {}
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and node.input[1] in dims and len(dims[node.input[1]]) == 2:
            k, n = dims[node.input[1]]
            per_token += k * n
            shapes[(k, n)] = shapes.get((k, n), 0) + k * n
    dominant = max(shapes, key=shapes.get) if shapes else None
    return {"bundle": str(bundle), "context_length": length, "macs_per_call": per_token * length,
            "weight_products": sum(1 for _ in shapes), "dominant_shape": {"m": length, "k": dominant[0],
                                                                             "n": dominant[1]} if dominant else None}


def _ort_session(graph, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _products(m: int, k: int, n: int):
    """(FP32 MatMul, static Q/DQ MatMul, DynamicQuantizeMatMul) single-product ONNX graphs."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((k, n)).astype(np.float32)
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
    opset = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    w_scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
    w_q = np.clip(np.rint(w / w_scale), -127, 127).astype(np.int8)

    fp32 = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "fp32", [x_info], [y_info],
        [numpy_helper.from_array(w, "w")]), opset_imports=opset)
    static = helper.make_model(helper.make_graph([
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=1),
        helper.make_node("MatMul", ["xd", "wd"], ["y"])], "static", [x_info], [y_info], [
        numpy_helper.from_array(np.float32(0.05), "xs"), numpy_helper.from_array(np.int8(0), "xz"),
        numpy_helper.from_array(w_q, "wq"), numpy_helper.from_array(w_scale, "ws"),
        numpy_helper.from_array(np.zeros(n, np.int8), "wz")]), opset_imports=opset)
    dynamic = helper.make_model(helper.make_graph(
        [helper.make_node("DynamicQuantizeMatMul", ["x", "wq", "ws"], ["y"], domain="com.microsoft")], "dynamic",
        [x_info], [y_info], [numpy_helper.from_array(w_q, "wq"), numpy_helper.from_array(w_scale, "ws")]),
        opset_imports=opset)
    return {"ort-fp32": fp32, "ort-int8-static": static, "ort-int8-dynamic": dynamic}


def gemm_rates(m: int, k: int, n: int, threads: int, rounds: int = 7, calls: int = 20,
               gap_s: float = 0.05) -> dict[str, Any]:
    """GMAC/s of one [m,k]x[k,n] product per backend: median over interleaved rounds of `calls` calls."""
    import torch

    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    runs = {name: (lambda s=_ort_session(g, threads): s.run(None, {"x": x})) for name, g in _products(m, k, n).items()}
    torch.set_num_threads(threads)
    tx, tw = torch.from_numpy(x), torch.randn(k, n)

    def torch_call():
        with torch.inference_mode():
            torch.matmul(tx, tw)

    runs["torch-fp32"] = torch_call
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():
        for _ in range(3):
            fn()
    for r in range(rounds):
        order = list(runs)[r % len(runs):] + list(runs)[:r % len(runs)]
        for name in order:
            time.sleep(gap_s)  # lets the previous backend's spinning worker threads go idle
            start = time.perf_counter()
            for _ in range(calls):
                runs[name]()
            times[name].append((time.perf_counter() - start) / calls)
    macs = m * k * n
    return {name: {"median_us": float(np.median(t) * 1e6), "gmac_per_s": macs / float(np.median(t)) / 1e9}
            for name, t in times.items()}


def estimate(teacher: Path, student: Path, threads: int) -> dict[str, Any]:
    t_macs, s_macs = weight_macs(teacher), weight_macs(student)
    t_shape, s_shape = t_macs["dominant_shape"], s_macs["dominant_shape"]
    t_rates = gemm_rates(t_shape["m"], t_shape["k"], t_shape["n"], threads)
    s_rates = gemm_rates(s_shape["m"], s_shape["k"], s_shape["n"], threads)
    estimates = {}
    for t_backend in ("ort-fp32", "torch-fp32"):
        teacher_s = t_macs["macs_per_call"] / (t_rates[t_backend]["gmac_per_s"] * 1e9)
        for s_backend in ("ort-fp32", "ort-int8-static", "ort-int8-dynamic"):
            student_s = s_macs["macs_per_call"] / (s_rates[s_backend]["gmac_per_s"] * 1e9)
            estimates[f"{s_backend} vs {t_backend}"] = {"teacher_ms": teacher_s * 1e3, "student_ms": student_s * 1e3,
                                                     "ratio": teacher_s / student_s}
    how = ("weight-bearing MatMul/Gemm MACs from the ONNX graphs at each bundle's context length; GEMM rates from "
           "single products at each model's dominant shape, same thread count, median of interleaved rounds (50 ms "
           "pause before each backend's calls); estimate = teacher time / S0 time if every product ran at that rate")
    return {"threads": threads, "teacher": t_macs, "student": s_macs,
            "mac_ratio": t_macs["macs_per_call"] / s_macs["macs_per_call"], "teacher_rates": t_rates,
            "student_rates": s_rates, "estimates": estimates, "how": how}


def render(result: dict[str, Any]) -> list[str]:
    t, s = result["teacher"], result["student"]
    lines = [f"MACs per batch-1 call (weight-bearing MatMul/Gemm): teacher {t['macs_per_call'] / 1e9:.2f} G at "
             f"context {t['context_length']}, S0 {s['macs_per_call'] / 1e6:.0f} M at context {s['context_length']}: "
             f"ratio {result['mac_ratio']:.1f}x", "",
             f"| product | shape (m x k x n) | {' | '.join(result['student_rates'])} |",
             "| --- | --- |" + " ---: |" * len(result["student_rates"])]
    for label, macs, rates in (("teacher", t, result["teacher_rates"]), ("S0", s, result["student_rates"])):
        d = macs["dominant_shape"]
        lines.append(f"| {label} | {d['m']} x {d['k']} x {d['n']} | "
                     + " | ".join(f"{r['gmac_per_s']:.1f} GMAC/s" for r in rates.values()) + " |")
    lines += ["", "| S0 backend vs teacher backend | teacher ms (estimate) | S0 ms (estimate) | estimated ratio |",
              "| --- | ---: | ---: | ---: |"]
    for name, b in result["estimates"].items():
        lines.append(f"| {name} | {b['teacher_ms']:.1f} | {b['student_ms']:.2f} | {b['ratio']:.1f}x |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", type=Path, required=True, help="FP32 SAM3 teacher bundle (edgeseg export)")
    p.add_argument("--student", type=Path, required=True, help="FP32 S0 bundle (edgeseg export)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    result = estimate(args.teacher, args.student, args.threads)
    print("\n".join(render(result)))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
