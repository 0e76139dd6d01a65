"""TensorRT backend: runs a bundle's ``model.engine`` (``edgeseg build --target gpu``, or a Jetson bundle
after ``build_engine.py``) through polygraphy's ``TrtRunner``. Needs TensorRT 10+ and the GPU (and
TensorRT version, unless built version-compatible) the engine was built for."""

from __future__ import annotations

import numpy as np

from edgeseg import trtprobe
from edgeseg.backends import require_tensorrt
from edgeseg.errors import EdgesegError
from edgeseg.runtime.base import Runner


class TensorRTRunner(Runner):
    runner = None

    def _activate(self) -> None:
        trt, gpu = require_tensorrt()
        engine = self.manifest.get("engine") or {}
        self.max_batch = int(engine.get("max_batch", 1))
        options = engine.get("builder_options") or {}
        built = self.manifest.get("tensorrt") or {}
        try:
            engine_path = self.bundle / self.manifest["model"]
            self.runner = trtprobe.trt_runner(trt, engine_path, bool(options.get("version_compatible")))
            self.runner.activate()
        except Exception as exc:  # TensorRT reports a foreign engine with its own exception types
            was = built.get("gpu") or {}
            raise EdgesegError(
                f"TensorRT {trt.__version__} on {gpu['name']} (sm {gpu['compute_capability']}) cannot load "
                f"{self.manifest['model']}, built with TensorRT {built.get('version')} for {was.get('name')} (sm "
                f"{was.get('compute_capability')}): rebuild it here with python3 build_engine.py in the bundle "
                f"({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})") from exc

    def _deactivate(self) -> None:
        if self.runner is not None:
            self.runner.deactivate()
        self.runner = None

    def _infer(self, input_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        memories, masks = [], []
        for start in range(0, len(input_ids), self.max_batch):
            out = self.runner.infer({"input_ids": input_ids[start:start + self.max_batch]})
            memories.append(np.asarray(out["memory"], dtype=np.float32).copy())
            masks.append(np.asarray(out["mask"]).astype(bool))
        return np.concatenate(memories), np.concatenate(masks)
