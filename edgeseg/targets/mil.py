"""Evaluate a Core ML ML program's MIL operations in torch (float32) where Core ML cannot run.

Core ML predicts on macOS / iOS only; on Linux coremltools builds and rewrites programs but cannot
execute them. Two build steps still need the values of a program's tensors:

* calibrating 8-bit activations (``--w8a8``): the min/max of every tensor over calibration prompts,
  keyed by the MIL variable names coremltools' activation-quantization passes look up;
* measuring what a converted package computes (its weights as stored, its quantize/dequantize steps),
  against the torch FP32 reference.

:func:`evaluate` walks the ``main`` function in program order and computes each operation with torch
in float32. It covers the operations edgeseg's encoders convert to and names any other one in its
error. It emulates the program's math, not Core ML's FP16 arithmetic or the Neural Engine's kernels:
figures from it are labelled "MIL emulation".
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import EdgesegError

INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "uint16": (0, 65535)}


def load_program(source):
    """The pymil ``Program`` of an ``MLModel`` or of a saved ``.mlpackage`` path."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

    mlmodel = source
    if isinstance(source, (str, os.PathLike)):
        mlmodel = ct.models.MLModel(str(Path(source)), skip_model_load=True)
    spec = mlmodel.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise EdgesegError("only ML programs (mlprogram) can be evaluated")
    return load_milproto(spec, specification_version=spec.specificationVersion, file_weights_dir=mlmodel.weights_dir)


# -- operations ----------------------------------------------------------------------------------
def _axis(axis: int, rank: int) -> int:
    return int(axis) + rank if int(axis) < 0 else int(axis)


def _along(values, axis, rank: int):
    """Broadcast per-channel ``values`` (1-D) along ``axis`` of a tensor of ``rank``; scalars as is."""
    if axis is None or values.dim() == 0 or values.numel() == 1:
        return values.reshape(()) if values.numel() == 1 else values
    shape = [1] * rank
    shape[_axis(axis, rank)] = -1
    return values.reshape(shape)


def _conv(torch, a):
    import torch.nn.functional as F

    x, w, b = a("x"), a("weight"), a("bias")
    spatial = x.dim() - 2
    strides = [int(s) for s in a("strides", [1] * spatial)]
    dilations = [int(d) for d in a("dilations", [1] * spatial)]
    pad_type = str(a("pad_type", "valid"))
    if pad_type == "custom":
        pad = [int(p) for p in a("pad")]
    elif pad_type == "valid":
        pad = [0] * (2 * spatial)
    elif pad_type == "same" and all(s == 1 for s in strides):
        pad = []
        for k, d in zip(w.shape[2:], dilations):
            total = d * (int(k) - 1)
            pad += [total // 2, total - total // 2]
    else:
        raise EdgesegError(f"MIL conv pad_type {pad_type!r} with strides {strides} is not supported")
    torch_pad = []  # F.pad wants the last dimension first: (left, right, top, bottom)
    for i in reversed(range(spatial)):
        torch_pad += [pad[2 * i], pad[2 * i + 1]]
    x = F.pad(x, torch_pad)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
    return fn(x, w, b, stride=strides, dilation=dilations, groups=int(a("groups", 1)))


def _layer_norm(torch, a):
    x = a("x")
    axes = [_axis(i, x.dim()) for i in a("axes")]
    mean = x.mean(dim=axes, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=axes, keepdim=True)
    out = (x - mean) / torch.sqrt(var + float(a("epsilon", 1e-5)))
    gamma, beta = a("gamma"), a("beta")
    if gamma is not None:
        out = out * gamma
    if beta is not None:
        out = out + beta
    return out


def _gelu(torch, a):
    import torch.nn.functional as F

    x, mode = a("x"), str(a("mode", "EXACT"))
    if mode == "EXACT":
        return F.gelu(x)
    if mode == "TANH_APPROXIMATION":
        return F.gelu(x, approximate="tanh")
    if mode == "SIGMOID_APPROXIMATION":
        return x * torch.sigmoid(1.702 * x)
    raise EdgesegError(f"MIL gelu mode {mode!r} is not supported")


def _reshape(torch, a):
    x, shape = a("x"), [int(s) for s in a("shape")]
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _expand_dims(torch, a):
    x = a("x")
    rank = x.dim() + len(a("axes"))
    for axis in sorted(_axis(i, rank) for i in a("axes")):
        x = x.unsqueeze(axis)
    return x


def _squeeze(torch, a):
    x, axes = a("x"), a("axes")
    if axes is None:
        return x.squeeze()
    keep = [d for i, d in enumerate(x.shape) if i not in {_axis(j, x.dim()) for j in axes}]
    return x.reshape(keep)


def _gather(torch, a):
    x, indices = a("x"), a("indices").long()
    if int(a("batch_dims", 0)) != 0:
        raise EdgesegError("MIL gather with batch_dims != 0 is not supported")
    axis = _axis(a("axis", 0), x.dim())
    indices = torch.where(indices < 0, indices + x.shape[axis], indices)
    picked = x.index_select(axis, indices.reshape(-1))
    return picked.reshape(tuple(x.shape[:axis]) + tuple(indices.shape) + tuple(x.shape[axis + 1:]))


def _split(torch, a):
    x = a("x")
    axis = _axis(a("axis"), x.dim())
    sizes = a("split_sizes")
    if sizes is None:
        parts = int(a("num_splits"))
        sizes = [x.shape[axis] // parts] * parts
    return tuple(torch.split(x, [int(s) for s in sizes], dim=axis))


def _slice_by_index(torch, a):
    x = a("x")
    rank = x.dim()
    begin, end = [int(v) for v in a("begin")], [int(v) for v in a("end")]
    stride = [int(v) for v in a("stride", [1] * rank)]
    begin_mask = [bool(v) for v in a("begin_mask", [False] * rank)]
    end_mask = [bool(v) for v in a("end_mask", [False] * rank)]
    squeeze = [bool(v) for v in a("squeeze_mask", [False] * rank)]
    index = []
    for i in range(rank):
        if squeeze[i]:
            index.append(begin[i])
            continue
        if stride[i] <= 0:
            raise EdgesegError("MIL slice_by_index with a non-positive stride is not supported")
        index.append(slice(None if begin_mask[i] else begin[i], None if end_mask[i] else end[i], stride[i]))
    return x[tuple(index)]


def _matmul(torch, a):
    x, y = a("x"), a("y")
    if bool(a("transpose_x", False)):
        x = x.transpose(-1, -2)
    if bool(a("transpose_y", False)):
        y = y.transpose(-1, -2)
    return torch.matmul(x, y)


def _quantize(torch, a):
    x, scale = a("input"), a("scale")
    zero = a("zero_point")
    axis = a("axis")
    q = torch.round(x / _along(scale, axis, x.dim()))
    if zero is not None:
        q = q + _along(zero.float(), axis, x.dim())
    low, high = INT_RANGES[str(a("output_dtype"))]
    return torch.clamp(q, low, high)


def _dequantize(torch, a, data: str = "input"):
    x, scale = a(data).float(), a("scale")
    zero, axis = a("zero_point"), a("axis")
    if zero is not None:
        x = x - _along(zero.float(), axis, x.dim())
    return x * _along(scale, axis, x.dim())


def _cast(torch, a):
    x, dtype = a("x"), str(a("dtype"))
    if dtype in ("fp16", "fp32", "fp64"):
        return x.float()  # emulated in float32 throughout
    if dtype == "bool":
        return x != 0
    return torch.round(x).long() if x.is_floating_point() else x.long()


def _cumsum(torch, a):
    x = a("x")
    axis = _axis(a("axis", 0), x.dim())
    if bool(a("reverse", False)):
        x = x.flip(axis)
    out = torch.cumsum(x, dim=axis)
    if bool(a("exclusive", False)):
        out = out - x
    return out.flip(axis) if bool(a("reverse", False)) else out


def _binary(fn):
    return lambda torch, a: fn(torch, a("x"), a("y"))


def _unary(fn):
    return lambda torch, a: fn(torch, a("x"))


OPS: dict[str, Callable[[Any, Callable], Any]] = {
    "add": _binary(lambda t, x, y: x + y),
    "sub": _binary(lambda t, x, y: x - y),
    "mul": _binary(lambda t, x, y: x * y),
    "real_div": _binary(lambda t, x, y: x.float() / y.float()),
    "pow": _binary(lambda t, x, y: t.pow(x, y)),
    "maximum": _binary(lambda t, x, y: t.maximum(x, y)),
    "minimum": _binary(lambda t, x, y: t.minimum(x, y)),
    "equal": _binary(lambda t, x, y: x == y),
    "not_equal": _binary(lambda t, x, y: x != y),
    "greater": _binary(lambda t, x, y: x > y),
    "greater_equal": _binary(lambda t, x, y: x >= y),
    "less": _binary(lambda t, x, y: x < y),
    "less_equal": _binary(lambda t, x, y: x <= y),
    "logical_and": _binary(lambda t, x, y: x.bool() & y.bool()),
    "logical_or": _binary(lambda t, x, y: x.bool() | y.bool()),
    "logical_not": _unary(lambda t, x: ~x.bool()),
    "relu": _unary(lambda t, x: t.relu(x)),
    "sigmoid": _unary(lambda t, x: t.sigmoid(x)),
    "tanh": _unary(lambda t, x: t.tanh(x)),
    "exp": _unary(lambda t, x: t.exp(x)),
    "sqrt": _unary(lambda t, x: t.sqrt(x)),
    "erf": _unary(lambda t, x: t.special.erf(x)),
    "rsqrt": lambda t, a: t.rsqrt(a("x") + float(a("epsilon", 1e-12))),
    "select": lambda t, a: t.where(a("cond").bool(), a("a"), a("b")),
    "transpose": lambda t, a: a("x").permute([int(p) for p in a("perm")]),
    "linear": lambda t, a: t.nn.functional.linear(a("x"), a("weight"), a("bias")),
    "matmul": _matmul,
    "conv": _conv,
    "layer_norm": _layer_norm,
    "gelu": _gelu,
    "softmax": lambda t, a: t.softmax(a("x"), dim=int(a("axis", -1))),
    "reduce_mean": lambda t, a: a("x").mean(dim=[int(i) for i in a("axes")], keepdim=bool(a("keep_dims", False))),
    "reduce_sum": lambda t, a: a("x").sum(dim=[int(i) for i in a("axes")], keepdim=bool(a("keep_dims", False))),
    "reduce_max": lambda t, a: a("x").amax(dim=[int(i) for i in a("axes")], keepdim=bool(a("keep_dims", False))),
    "reshape": _reshape,
    "expand_dims": _expand_dims,
    "squeeze": _squeeze,
    "gather": _gather,
    "split": _split,
    "concat": lambda t, a: t.cat(list(a("values")), dim=int(a("axis"))),
    "slice_by_index": _slice_by_index,
    "identity": lambda t, a: a("x"),
    "cast": _cast,
    "cumsum": _cumsum,
    "quantize": _quantize,
    "dequantize": _dequantize,
    "constexpr_affine_dequantize": lambda t, a: _dequantize(t, a, "quantized_data"),
}


def _tensor(torch, value):
    array = np.asarray(value)
    if array.dtype.kind == "f":
        return torch.from_numpy(array.astype(np.float32))
    if array.dtype.kind in "iu":
        return torch.from_numpy(array.astype(np.int64))
    if array.dtype.kind == "b":
        return torch.from_numpy(array)
    if array.ndim == 0 and array.dtype.kind in "US":
        return str(array)
    return value


#: per program: its constants as float32 tensors and its constexpr (stored-weight) results, computed once
_CONSTANTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def evaluate(program, inputs: Mapping[str, np.ndarray],
             observe: Callable[[str, Any], None] | None = None) -> dict[str, np.ndarray]:
    """Run ``program``'s ``main`` on ``inputs`` (float32 math); ``observe(name, tensor)`` sees every value.

    Returns the function's outputs by name as numpy arrays.
    """
    import torch

    function = program.functions["main"]
    constants = _CONSTANTS.setdefault(program, {})  # const values and constexpr results, reused across calls
    env: dict[str, Any] = {}
    for name, var in function.inputs.items():
        if name not in inputs:
            raise EdgesegError(f"MIL evaluation: input {name!r} missing")
        env[var.name] = _tensor(torch, inputs[name])
        if observe is not None:
            observe(var.name, env[var.name])

    def value_of(var):
        if var.name in env:
            return env[var.name]
        if var.name in constants:
            return constants[var.name]
        if var.val is not None:
            constants[var.name] = _tensor(torch, var.val)
            return constants[var.name]
        raise EdgesegError(f"MIL evaluation: {var.name!r} has no value yet (program order)")

    with torch.no_grad():
        for op in function.operations:
            if op.op_type == "const":
                continue  # read on first use
            if op.op_type.startswith("constexpr_") and op.outputs[0].name in constants:
                if observe is not None:
                    observe(op.outputs[0].name, constants[op.outputs[0].name])
                continue
            fn = OPS.get(op.op_type)
            if fn is None:
                raise EdgesegError(f"MIL evaluation: operation {op.op_type!r} ({op.name}) is not supported")

            def arg(key, default=None, _op=op):
                var = _op.inputs.get(key)
                if var is None:
                    return default
                if isinstance(var, (list, tuple)):
                    return [value_of(v) for v in var]
                return value_of(var)

            result = fn(torch, arg)
            results = result if isinstance(result, tuple) else (result,)
            if len(results) != len(op.outputs):
                raise EdgesegError(f"MIL evaluation: {op.op_type} gave {len(results)} outputs, expected "
                                   f"{len(op.outputs)}")
            for var, value in zip(op.outputs, results):
                (constants if op.op_type.startswith("constexpr_") else env)[var.name] = value
                if observe is not None:
                    observe(var.name, value)
    return {var.name: np.asarray(env[var.name].numpy()) for var in function.outputs}


def evaluate_batches(program, input_ids: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """An encoder program on int ids in batches: (memory float32, mask bool)."""
    memories, masks = [], []
    for start in range(0, len(input_ids), batch):
        out = evaluate(program, {"input_ids": input_ids[start:start + batch].astype(np.int32)})
        memories.append(out["memory"].astype(np.float32))
        masks.append(out["mask"] != 0)
    return np.concatenate(memories), np.concatenate(masks)


def activation_ranges(program, batches: Iterable[Mapping[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """``{name: {"rmin", "rmax"}}`` of every floating-point tensor of ``program`` over ``batches``.

    The layout coremltools' activation-quantization passes read (``activation_stats``); tensors that
    feed or leave the same ``concat`` share one range, as Core ML's own calibration does.
    """
    ranges: dict[str, dict[str, float]] = {}

    def observe(name, value):
        if hasattr(value, "is_floating_point") and value.is_floating_point() and value.numel():
            low, high = float(value.min()), float(value.max())
            seen = ranges.setdefault(name, {"rmin": low, "rmax": high})
            seen["rmin"], seen["rmax"] = min(seen["rmin"], low), max(seen["rmax"], high)

    count = 0
    for feed in batches:
        evaluate(program, feed, observe)
        count += 1
    if not count:
        raise EdgesegError("activation calibration needs at least one batch")
    for op in program.functions["main"].operations:
        if op.op_type == "concat":
            names = [v.name for v in op.inputs["values"]] + [op.outputs[0].name]
            known = [ranges[n] for n in names if n in ranges]
            if known:
                shared = {"rmin": min(r["rmin"] for r in known), "rmax": max(r["rmax"] for r in known)}
                for n in names:
                    ranges[n] = dict(shared)
    return ranges
