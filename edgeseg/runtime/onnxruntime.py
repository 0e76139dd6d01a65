"""ONNX Runtime backend (CPU).

The runner builds its session from the options the bundle's manifest records (``onnxruntime`` section of an
``edgeseg build --target onnx`` bundle: session options, providers, ``max_batch``), falling back to
:data:`SESSION_OPTIONS` for export/quantize bundles, and runs at most ``max_batch`` prompts per call.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeseg.bundlecheck import printable
from edgeseg.errors import EdgesegError
from edgeseg.runtime.base import Runner

#: what a session gets unless the manifest records otherwise (``intra_op_num_threads`` 0 = one per core).
#: Memory-pattern planning keeps one pre-sized block per input shape it has seen; without it the arena
#: serves every batch (peak RSS ~5 MB lower for S0, no measurable latency change).
SESSION_OPTIONS = {
    "graph_optimization_level": "ORT_ENABLE_ALL",
    "execution_mode": "ORT_SEQUENTIAL",
    "intra_op_num_threads": 0,
    "inter_op_num_threads": 1,
    "log_severity_level": 3,
    "enable_mem_pattern": False,
}
PROVIDERS = ["CPUExecutionProvider"]


def session_options(recorded: dict[str, Any] | None = None, threads: int | None = None) -> Any:
    """An ``onnxruntime.SessionOptions`` from :data:`SESSION_OPTIONS` updated with ``recorded``;
    ``threads`` (the caller's choice) overrides the recorded intra-op thread count."""
    import onnxruntime as ort

    unknown = set(recorded or {}) - set(SESSION_OPTIONS)
    if unknown:
        raise EdgesegError(f"the manifest records ONNX Runtime session options this edgeseg does not know: "
                           f"{', '.join(sorted(unknown))}")
    values = {**SESSION_OPTIONS, **(recorded or {})}
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, values["graph_optimization_level"])
    options.execution_mode = getattr(ort.ExecutionMode, values["execution_mode"])
    options.intra_op_num_threads = int(threads or values["intra_op_num_threads"])
    options.inter_op_num_threads = int(values["inter_op_num_threads"])
    options.log_severity_level = int(values["log_severity_level"])
    options.enable_mem_pattern = bool(values["enable_mem_pattern"])
    return options


def cpu_session(model: Any, threads: int | None = None, inter_op_threads: int | None = None) -> Any:
    """A quiet ONNX Runtime CPU session of ``model`` (a path or serialized bytes) with ONNX Runtime's default
    options otherwise: what the build side's checks and the benchmarks' probes use (``threads`` None: one
    intra-op thread per core). Bundles are run by :class:`OnnxRuntimeRunner` with their recorded options."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = int(threads)
    if inter_op_threads:
        options.inter_op_num_threads = int(inter_op_threads)
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=PROVIDERS)


class OnnxRuntimeRunner(Runner):
    session = None
    max_batch: int | None = None

    def _activate(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EdgesegError("onnxruntime is not installed: pip install onnxruntime") from exc
        recorded = self.manifest.get("onnxruntime") or {}
        self.max_batch = int(recorded["max_batch"]) if recorded.get("max_batch") else None
        options = session_options(recorded.get("session_options"), self.threads)
        try:
            self.session = ort.InferenceSession(str(self.bundle / self.manifest["model"]), options,
                                                providers=recorded.get("providers") or PROVIDERS)
        except Exception as exc:  # ORT raises its own exception types for unreadable models
            raise EdgesegError(f"ONNX Runtime cannot load {printable(self.bundle / self.manifest['model'])}: "
                               f"{printable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)}") from exc
        self._check_signature()

    def _check_signature(self) -> None:
        """The model's own inputs/outputs are the manifest's: input_ids [batch, L], memory and mask."""
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        shape = inputs.get("input_ids")
        if len(inputs) != 1 or shape is None or len(shape) != 2 or {"memory", "mask"} - outputs:
            self.session = None
            raise EdgesegError(f"{printable(self.manifest['model'])} of bundle {printable(self.bundle)} does not take "
                               "input_ids [batch, L] and return memory and mask")
        if isinstance(shape[1], int) and shape[1] != self.context_length:
            self.session = None
            raise EdgesegError(f"{printable(self.manifest['model'])} of bundle {printable(self.bundle)} takes "
                               f"{shape[1]} tokens per prompt; the manifest says context_length {self.context_length}")

    def _deactivate(self) -> None:
        self.session = None

    def _infer(self, input_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        step = self.max_batch or max(1, len(input_ids))
        memories, masks = [], []
        for start in range(0, max(1, len(input_ids)), step):
            memory, mask = self._run(input_ids[start:start + step])
            memories.append(memory)
            masks.append(mask)
        return np.concatenate(memories), np.concatenate(masks)

    def _run(self, input_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        try:
            memory, mask = self.session.run(["memory", "mask"], {"input_ids": input_ids})
        except Exception as exc:  # ORT's own exception types (bad shapes in a model that loaded, ...)
            raise EdgesegError(f"ONNX Runtime failed on bundle {printable(self.bundle)}: "
                               f"{printable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)}") from exc
        if memory.shape != (*input_ids.shape, self.output_dim) or mask.shape != input_ids.shape:
            raise EdgesegError(f"bundle {printable(self.bundle)}: the model returned memory {list(memory.shape)} and "
                               f"mask {list(mask.shape)} for ids {list(input_ids.shape)}")
        return memory.astype(np.float32, copy=False), mask.astype(bool)
