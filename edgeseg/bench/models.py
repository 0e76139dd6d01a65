"""What ``edgeseg bench`` runs: the baselines and the candidates, each behind one small interface.

A :class:`Model` encodes prompts (tokenized at its context length; a *dynamic-length* model runs each
batch at its longest prompt's own length and is padded back, which is exact for the causal teacher)
and makes zero-argument calls on prepared ids for the latency blocks.

Baselines (the SAM3 text encoder, torch, on ``--device``):

- ``sam3-fp32``: FP32 at SAM3's fixed context 32, the reference of every accuracy figure;
- ``sam3-fp32-dyn``: the same model at each prompt's own length (what a user who knows the teacher is
  causal would run: the same features for a fraction of the work);
- with ``teacher_int8``: ``sam3-int8-torch`` and ``sam3-int8-torch-dyn``, torch's dynamic INT8
  (``torch.ao.quantization.quantize_dynamic`` on every ``nn.Linear``; the attention in-projection, a raw
  parameter, stays FP32).

ONNX Runtime teachers are candidates like any bundle: an ``edgeseg export --encoder sam3`` bundle runs at
32, one exported with ``--dynamic-length`` (and its INT8 bundles) at each prompt's own length.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeseg.outputs import Encoded

log = logging.getLogger(__name__)

FIXED, DYNAMIC = "sam3-fp32", "sam3-fp32-dyn"
TORCH_INT8, TORCH_INT8_DYNAMIC = "sam3-int8-torch", "sam3-int8-torch-dyn"


def own_length(ids: np.ndarray) -> int:
    """The longest prompt's length in a batch of ids (SOT..first EOT, any pad id)."""
    from edgeseg.export import own_length as _own_length

    return _own_length(ids)


@dataclass
class Model:
    key: str
    facts: dict[str, Any]
    context_length: int
    tokenizer: Any
    infer: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # ids [B, L] -> (memory, mask) numpy
    prepare: Callable[[np.ndarray], Callable[[], Any]]  # ids -> zero-argument call (latency blocks)
    dynamic: bool = False
    sync: Callable[[], None] | None = None
    torch_model: Any = None
    runner: Any = None
    kernel: str | None = None  # the GEMM kind its products run on (edgeseg.bench.gemm.BACKENDS)
    shares_weights_with: str | None = None  # a dynamic variant of another model: no memory of its own
    extra: dict[str, Any] = field(default_factory=dict)

    def ids(self, prompts: list[str]) -> np.ndarray:
        ids = self.tokenizer(list(prompts), self.context_length).ids
        return ids[:, :own_length(ids)] if self.dynamic else ids

    def encode(self, prompts: list[str], batch_size: int = 64) -> Encoded:
        """Encode ``prompts`` in batches; dynamic models run each batch at its own length, padded back."""
        tokens = self.tokenizer(list(prompts), self.context_length)
        memories, masks = [], []
        for start in range(0, len(tokens.ids), batch_size):
            ids = tokens.ids[start:start + batch_size]
            run = ids[:, :own_length(ids)] if self.dynamic else ids
            memory, mask = self.infer(run)
            width = ids.shape[1] - memory.shape[1]
            memories.append(np.pad(memory, ((0, 0), (0, width), (0, 0))))
            masks.append(np.pad(mask, ((0, 0), (0, width)), constant_values=True))
        return Encoded(tokens.ids, np.concatenate(masks), np.concatenate(memories), tokens.truncated)


def torch_model(key: str, model: Any, label: str, facts: dict[str, Any], device: Any, dynamic: bool = False,
                kernel: str = "torch-fp32", shares_weights_with: str | None = None) -> Model:
    import torch

    from edgeseg.tokenizer import get_tokenizer

    def infer(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            memory, mask = model(torch.from_numpy(ids).to(device))
        return memory.float().cpu().numpy(), mask.cpu().numpy()

    def prepare(ids: np.ndarray) -> Callable[[], Any]:
        tensor = torch.from_numpy(ids).to(device)

        def call() -> Any:
            with torch.inference_mode():
                return model(tensor)
        return call

    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else None
    padding = getattr(model, "padding", None)  # the padding semantics it runs with (pad id for its tokenizer)
    facts = {"kind": "torch", "label": label, "context_length": int(model.context_length),
             "backend": "torch", "execution_provider": f"torch {torch.device(device).type}",
             "sequence": "own length" if dynamic else f"fixed {model.context_length}",
             "shares_weights_with": shares_weights_with,
             "semantics": padding.semantics if padding else "efficientsam3", **facts}
    on_cpu = torch.device(device).type == "cpu"  # the GEMM floor is measured for CPU kernels only
    tokenizer = get_tokenizer(pad_id=padding.pad_id if padding else 0)
    return Model(key, facts, int(model.context_length), tokenizer, infer, prepare, dynamic, sync,
                 torch_model=model, kernel=kernel if on_cpu else None, shares_weights_with=shares_weights_with)


def bundle_model(key: str, path: Any, threads: int) -> Model:
    from edgeseg.bench.gemm import bundle_backend
    from edgeseg.runtime import load

    runner = load(path, threads=threads)
    manifest = runner.manifest
    session = getattr(runner, "session", None)
    providers = session.get_providers() if session is not None else None
    dynamic = bool(manifest.get("dynamic_length"))
    facts = {
        "kind": "bundle", "path": str(path), "encoder": manifest["encoder"],
        "label": f"{manifest['encoder']} {manifest['precision']} bundle ({manifest['backend']})",
        "context_length": int(manifest["context_length"]), "precision": manifest["precision"],
        "backend": manifest["backend"], "target": manifest.get("target"),
        "execution_provider": ",".join(providers) if providers else manifest["backend"],
        "checkpoint": (manifest.get("source") or {}).get("checkpoint_sha256", "unknown"),
        "model_sha256": manifest["files"][manifest["model"]]["sha256"],
        "source_model_sha256": (manifest.get("source_bundle") or {}).get("model_sha256"),
        "sequence": "own length" if dynamic else f"fixed {manifest['context_length']}",
        "semantics": manifest.get("semantics", "efficientsam3"),
    }
    return Model(key, facts, runner.context_length, runner.tokenizer, runner.infer,
                 lambda ids: (lambda: runner.infer(ids)), dynamic, runner=runner, kernel=bundle_backend(manifest))


def torch_int8(model: Any) -> Any:
    """torch's dynamic INT8 copy of a teacher (every nn.Linear; qint8 weights, activations at run time)."""
    import copy

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(copy.deepcopy(model).cpu().eval(), {torch.nn.Linear}, dtype=torch.qint8)


def baselines(teacher: Any, facts: dict[str, Any], device: Any, teacher_int8: bool = False) -> list[Model]:
    """The torch teacher at fixed 32 and at the prompt's own length (and torch INT8 of both)."""
    models = [torch_model(FIXED, teacher, "SAM3 text encoder FP32 (torch, fixed 32, baseline)",
                          {**facts, "precision": "fp32"}, device),
              torch_model(DYNAMIC, teacher, "SAM3 text encoder FP32 (torch, own length, baseline)",
                          {**facts, "precision": "fp32"}, device, dynamic=True, shares_weights_with=FIXED)]
    if teacher_int8:
        if str(device) != "cpu":
            log.warning("torch dynamic INT8 runs on CPU only: no %s baseline on %s", TORCH_INT8, device)
            return models
        quantized = torch_int8(teacher)
        quantized.context_length = teacher.context_length
        int8 = {**facts, "precision": "int8", "quantization": "torch.ao quantize_dynamic (nn.Linear, qint8)"}
        models += [torch_model(TORCH_INT8, quantized, "SAM3 text encoder INT8 (torch dynamic, fixed 32)", int8,
                               device, kernel="torch-int8"),
                   torch_model(TORCH_INT8_DYNAMIC, quantized, "SAM3 text encoder INT8 (torch dynamic, own length)",
                               int8, device, dynamic=True, kernel="torch-int8", shares_weights_with=TORCH_INT8)]
    return models
