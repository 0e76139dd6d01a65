"""MACs per call and this machine's GEMM floor: how fast a model could run if only its products took time.

The encoders' time goes to weight-bearing matrix products. One counting rule serves every model:
a weight matrix ``k x n`` applied to every token costs ``k * n`` multiply-accumulates (MACs) per
token, so a call costs ``tokens * sum(k * n)``. The matrices are read from a torch model (Linear
weights, attention in-projections, 1x1 convolutions; dead parameters left out) or from an ONNX
graph (MatMul/Gemm whose weight is an initializer, directly or through a DequantizeLinear, and
ONNX Runtime's integer products); embedding lookups, attention score products and depthwise
convolutions are not counted (< 1% of the MACs here).

The **GEMM floor** of a candidate is its MACs divided by the rate one product of its dominant shape
(``m = batch * tokens``, the largest ``k x n``) reaches on this machine with the same threads and
the same kind of kernel (torch FP32, ONNX Runtime FP32, INT8 static Q/DQ or dynamic). Efficiency =
floor / measured p50: 1.0 would mean nothing but the products took time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

#: the kinds of product whose rates :func:`gemm_rates` measures
BACKENDS = ("ort-fp32", "ort-int8-static", "ort-int8-dynamic", "torch-fp32", "torch-int8")
_INTEGER_PRODUCTS = ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")


def count(matrices: Iterable[tuple[int, int]]) -> dict[str, Any]:
    """MACs per token and the dominant ``(k, n)`` of a list of weight matrices (the one counting rule)."""
    shapes: dict[tuple[int, int], int] = {}
    for k, n in matrices:
        shapes[(int(k), int(n))] = shapes.get((int(k), int(n)), 0) + int(k) * int(n)
    dominant = max(shapes, key=shapes.get) if shapes else None
    return {"macs_per_token": int(sum(shapes.values())), "products": len(shapes),
            "dominant": {"k": dominant[0], "n": dominant[1]} if dominant else None}


def torch_matrices(model: Any) -> list[tuple[int, int]]:
    """Weight matrices a torch encoder's forward applies per token (see the module docstring)."""
    import torch

    unused = set(getattr(model, "unused_parameters", ()))
    modules = dict(model.named_modules())
    found = []
    for name, param in model.named_parameters():
        owner_name = name.rpartition(".")[0]
        if name in unused or owner_name in unused:
            continue
        owner = modules[owner_name]
        if param.dim() == 2 and (isinstance(owner, torch.nn.Linear) or name.endswith("in_proj_weight")):
            found.append((param.shape[1], param.shape[0]))
        elif (isinstance(owner, torch.nn.Conv2d) and param.dim() == 4 and owner.groups == 1
              and owner.kernel_size == (1, 1)):
            found.append((param.shape[1], param.shape[0]))
    return found


def onnx_matrices(model_path: str | Path) -> list[tuple[int, int]]:
    """Weight matrices of an ONNX graph's products, FP32 or INT8 (no weight data read)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    dims = {i.name: list(i.dims) for i in graph.initializer}
    dequantized = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    found = []
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm", *_INTEGER_PRODUCTS) and len(node.input) > 1:
            weight = dequantized.get(node.input[1], node.input[1])
            shape = dims.get(weight)
            if shape is not None and len(shape) == 2:
                found.append((shape[0], shape[1]))
    return found


def macs(counted: dict[str, Any], tokens: int) -> dict[str, Any]:
    """MACs of one call over ``tokens`` tokens (batch x sequence length) and its dominant product shape."""
    dominant = counted["dominant"]
    return {"macs_per_call": counted["macs_per_token"] * int(tokens), "tokens": int(tokens),
            "shape": {"m": int(tokens), **dominant} if dominant else None}


def bundle_backend(manifest: dict[str, Any]) -> str | None:
    """Which measured product kind a bundle's model runs on (None: no CPU rate to compare with)."""
    if manifest.get("backend") != "onnxruntime":
        return None
    if manifest.get("precision") == "fp32":
        return "ort-fp32"
    if manifest.get("precision") == "int8":
        mode = (manifest.get("quantization") or {}).get("mode", "static")
        return f"ort-int8-{mode}"
    return None



def _products(m: int, k: int, n: int) -> dict[str, Any]:
    """Single-product ONNX graphs: FP32 MatMul, static Q/DQ MatMul, DynamicQuantizeMatMul."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
    opset = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    w_scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
    w_q = np.clip(np.rint(w / w_scale), -127, 127).astype(np.int8)
    init = numpy_helper.from_array

    def model(nodes: list, name: str, inits: list) -> Any:
        return helper.make_model(helper.make_graph(nodes, name, [x_info], [y_info], inits), opset_imports=opset)

    return {
        "ort-fp32": model([helper.make_node("MatMul", ["x", "w"], ["y"])], "fp32", [init(w, "w")]),
        "ort-int8-static": model([
            helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
            helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=1),
            helper.make_node("MatMul", ["xd", "wd"], ["y"])], "static", [
            init(np.float32(0.05), "xs"), init(np.int8(0), "xz"), init(w_q, "wq"), init(w_scale, "ws"),
            init(np.zeros(n, np.int8), "wz")]),
        "ort-int8-dynamic": model([helper.make_node("DynamicQuantizeMatMul", ["x", "wq", "ws"], ["y"],
                                                    domain="com.microsoft")], "dynamic",
                                  [init(w_q, "wq"), init(w_scale, "ws")]),
    }


def _calls(m: int, k: int, n: int, threads: int, backends: Iterable[str]) -> dict[str, Callable[[], Any]]:
    from edgeseg.runtime.onnxruntime import cpu_session

    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    wanted = set(backends)
    graphs = _products(m, k, n)
    calls: dict[str, Callable[[], Any]] = {
        name: (lambda s=cpu_session(g.SerializeToString(), threads, inter_op_threads=1): s.run(None, {"x": x}))
        for name, g in graphs.items() if name in wanted}
    if "torch-fp32" in wanted:
        import torch

        torch.set_num_threads(threads)
        tx, tw = torch.from_numpy(x), torch.randn(k, n)

        def torch_call() -> None:
            with torch.inference_mode():
                torch.matmul(tx, tw)
        calls["torch-fp32"] = torch_call
    if "torch-int8" in wanted:
        calls["torch-int8"] = _torch_int8_call(x, k, n, threads)
    return calls


def _torch_int8_call(x: np.ndarray, k: int, n: int, threads: int) -> Callable[[], Any]:
    """torch's dynamic INT8 Linear (what ``quantize_dynamic`` puts in the teacher)."""
    import warnings

    import torch

    torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        layer = quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(k, n, bias=False)), {torch.nn.Linear},
                                 dtype=torch.qint8)
    tx = torch.from_numpy(x)

    def call() -> None:
        with torch.inference_mode():
            layer(tx)
    return call


def gemm_rates(m: int, k: int, n: int, threads: int, backends: Iterable[str] = BACKENDS, rounds: int = 7,
               calls: int = 20, gap_s: float = 0.05) -> dict[str, Any]:
    """GMAC/s of one ``[m,k] x [k,n]`` product per backend: median over rotated rounds of ``calls`` calls.

    torch's thread count is set to ``threads`` for the measurement and restored afterwards."""
    torch_threads = _torch_threads()
    try:
        return _measure(_calls(m, k, n, threads, backends), m * k * n, rounds, calls, gap_s)
    finally:
        if torch_threads is not None:
            import torch

            torch.set_num_threads(torch_threads)


def _torch_threads() -> int | None:
    """torch's current thread count, or None when torch was never imported (nothing to restore)."""
    import sys

    return sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None


def _measure(runs: dict[str, Callable[[], Any]], product_macs: int, rounds: int, calls: int,
             gap_s: float) -> dict[str, Any]:
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():
        for _ in range(3):
            fn()
    names = list(runs)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(gap_s)  # lets the previous backend's spinning worker threads go idle
            start = time.perf_counter()
            for _ in range(calls):
                runs[name]()
            times[name].append((time.perf_counter() - start) / calls)
    return {name: {"median_us": float(np.median(t) * 1e6), "gmac_per_s": product_macs / float(np.median(t)) / 1e9}
            for name, t in times.items()}


RATES_HOW = ("one [m,k]x[k,n] product at the candidate's dominant shape (m = batch x tokens), same threads, the "
             "candidate's kind of kernel; median over 7 rotated rounds of 20 calls (50 ms pause before each kind)")


def floor_ms(call_macs: int, gmac_per_s: float) -> float:
    """Time of ``call_macs`` MACs at ``gmac_per_s``, in milliseconds."""
    return call_macs / (gmac_per_s * 1e9) * 1e3


class RateCache:
    """Measures each (shape, backend) rate once per run; ``measure`` may be replaced (tests)."""

    def __init__(self, threads: int, measure: Callable[..., dict[str, Any]] = gemm_rates):
        self.threads, self.measure = threads, measure
        self.rates: dict[str, dict[str, Any]] = {}

    def rate(self, shape: dict[str, int], backend: str) -> float:
        key = f"{shape['m']}x{shape['k']}x{shape['n']}"
        row = self.rates.setdefault(key, {})
        if backend not in row:
            row.update(self.measure(shape["m"], shape["k"], shape["n"], self.threads, backends=[backend]))
        return row[backend]["gmac_per_s"]
