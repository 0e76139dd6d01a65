"""Core ML backend: runs a bundle's ``model.mlpackage`` with coremltools (macOS 14+ only).

The package takes int32 ids and returns the mask as int32 (1 = padding); this runner converts both
so that it honours the common contract (int64 ids in, bool mask out)."""

from __future__ import annotations

import sys

import numpy as np

from edgeseg.backends import require_coremltools
from edgeseg.errors import EdgesegError
from edgeseg.runtime.base import Runner


class CoreMLRunner(Runner):
    model = None

    def _activate(self) -> None:
        if sys.platform != "darwin":
            raise EdgesegError("Core ML bundles run on macOS 14+ / iOS 17+ only (coremltools cannot run models on "
                               f"{sys.platform}); use an onnx bundle here")
        ct = require_coremltools("running a Core ML bundle")
        info = self.manifest.get("coreml") or {}
        package = self.bundle / info.get("package", "model.mlpackage")
        self.max_batch = int(info.get("max_batch", 1))
        units = getattr(ct.ComputeUnit, info.get("compute_units", "CPU_AND_NE"))
        try:
            self.model = ct.models.MLModel(str(package), compute_units=units)
        except Exception as exc:  # Core ML reports its own errors
            raise EdgesegError(f"Core ML cannot load {package}: {str(exc).splitlines()[0][:200]}") from exc

    def _deactivate(self) -> None:
        self.model = None

    def _infer(self, input_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if input_ids.size and (input_ids.min() < 0 or input_ids.max() > np.iinfo(np.int32).max):
            raise EdgesegError("token ids do not fit the Core ML model's int32 input")
        memories, masks = [], []
        for start in range(0, len(input_ids), self.max_batch):
            out = self.model.predict({"input_ids": input_ids[start:start + self.max_batch].astype(np.int32)})
            memories.append(np.asarray(out["memory"], dtype=np.float32))
            masks.append(np.asarray(out["mask"]) != 0)
        return np.concatenate(memories), np.concatenate(masks)
