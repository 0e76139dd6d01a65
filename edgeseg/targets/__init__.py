"""Deployment targets: ``edgeseg build --target {onnx,gpu,jetson,coreml}``.

=========  ==========================================  =====================================
target     model file                                   runs with
=========  ==========================================  =====================================
onnx       model.onnx (FP32, INT8 Q/DQ or FP16)        ONNX Runtime (session options recorded)
gpu        model.engine (+ model.onnx, build_engine.py) TensorRT 10+, built on this GPU
jetson     model.onnx + build_engine.py                 the script builds model.engine on the Jetson
coreml     model.mlpackage                              Core ML, iOS 17+ / macOS 14+
=========  ==========================================  =====================================

Importing this package (or any module in it) needs neither torch, TensorRT, polygraphy nor
coremltools: each is imported inside the function that uses it. See :mod:`edgeseg.targets.pipeline`.
"""

from __future__ import annotations

TARGETS = ("onnx", "gpu", "jetson", "coreml")
PRECISIONS = ("fp32", "fp16", "int8")


def build(*args, **kwargs):
    """:func:`edgeseg.targets.pipeline.build` (imported on first use)."""
    from edgeseg.targets.pipeline import build as _build

    return _build(*args, **kwargs)


__all__ = ["PRECISIONS", "TARGETS", "build"]
