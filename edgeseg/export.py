"""torch encoder -> FP32 ONNX bundle, verified against torch with ONNX Runtime.

The export wrapper lives here, apart from the models: it takes an inference copy of the encoder
(S0's RepMixer blocks fused, see :func:`edgeseg.encoders.mobileclip.fuse_repmixer_blocks`) and
traces ``input_ids [batch, L] -> (memory [batch, L, 256], mask [batch, L])`` with a dynamic batch
and a fixed context length. A causal encoder (the SAM3 teacher) may instead be exported with a
dynamic sequence axis (``dynamic_length=True``, 1 <= L <= context length): its valid positions do
not depend on how much padding follows them, so a prompt can run at its own length, exactly (the
export checks it). The padding mask (and, under transformers
semantics, the students' attention mask) is computed inside the graph from the ids (``Equal``, and
for "after the first EOT" a float ``CumSum``), so a user feeds ids only, padded with the manifest's
``tokenizer.pad_id``. Dead weights (the teacher's ``text_projection``, the students'
``projection_layer``) are not reachable from the outputs, so they are not in the graph.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeseg.bundle import REFERENCE, bundle_writer, finalize, io_spec, reference_entry, save_reference, tool_versions
from edgeseg.encoders import TextEncoder
from edgeseg.encoders.mobileclip import MobileCLIPTextEncoder, fuse_repmixer_blocks
from edgeseg.errors import EdgesegError
from edgeseg.outputs import token_fidelity
from edgeseg.runtime.onnxruntime import cpu_session
from edgeseg.tokenizer import EOT_ID, MASK_RULES, get_tokenizer
from edgeseg.vocab import write_bundle_vocabulary

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
EXPORT_TOLERANCE = 1e-4
MODEL_FILE = "model.onnx"


class OnnxExportWrapper(nn.Module):
    """Names the graph's inputs/outputs; holds an inference copy of the encoder."""

    def __init__(self, encoder: TextEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        memory, mask = self.encoder(input_ids)
        return memory.float(), mask


#: encoder families whose outputs at valid positions do not depend on the padding after them
CAUSAL_FAMILIES = ("sam3",)


def inference_copy(model: TextEncoder, dynamic_length: bool = False) -> TextEncoder:
    """A float32 CPU copy in eval mode with training-form blocks fused."""
    clone = copy.deepcopy(model).float().cpu().eval()
    clone.static_length = not dynamic_length
    if isinstance(clone, MobileCLIPTextEncoder):
        fuse_repmixer_blocks(clone)
    return clone


def check_dynamic_length(name: str, config: dict[str, Any]) -> None:
    """A dynamic sequence axis is exact only for causal encoders: refuse the others."""
    if config.get("family") not in CAUSAL_FAMILIES:
        raise EdgesegError(f"--dynamic-length needs a causal encoder (the SAM3 teacher); {name} is "
                           f"{config.get('family')}, whose outputs depend on the padding after a prompt")


def export_onnx(model: TextEncoder, path: str | os.PathLike, opset: int = DEFAULT_OPSET,
                dynamic_length: bool = False) -> Path:
    """Trace ``model`` to ONNX at ``path`` (dynamic batch; fixed context length unless ``dynamic_length``)."""
    if opset < 17:
        raise EdgesegError(f"opset {opset} is too old: LayerNormalization needs opset 17 or newer")
    if dynamic_length:
        check_dynamic_length(model.name, model.config)
    path = Path(path)
    wrapper = OnnxExportWrapper(inference_copy(model, dynamic_length)).eval()
    example = torch.from_numpy(get_tokenizer()(["a dog", "a player in white"], model.context_length,
                                                model.pad_id).ids)
    axes = {0: "batch", 1: "length"} if dynamic_length else {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (example,), str(path), dynamo=False, opset_version=opset, do_constant_folding=True,
            input_names=["input_ids"], output_names=["memory", "mask"],
            dynamic_axes={"input_ids": axes, "memory": axes, "mask": axes},
        )
    return path


def own_length(input_ids: np.ndarray, eot_id: int = EOT_ID) -> int:
    """The longest prompt's length in a batch (SOT..its first EOT, whatever the pad id: 0, or 49407 = EOT
    under transformers semantics; a row without EOT: up to its last non-zero id), at least 1."""
    ids = np.asarray(input_ids)
    if not ids.size:
        return 1
    is_eot = ids == eot_id
    nonzero = ids != 0
    last = np.where(nonzero.any(1), ids.shape[1] - nonzero[:, ::-1].argmax(1), 1)
    return int(np.where(is_eot.any(1), is_eot.argmax(1) + 1, last).max())


def _dynamic_length_check(path: Path, ids: np.ndarray, memory: np.ndarray, mask: np.ndarray,
                          tolerance: float) -> dict[str, Any]:
    """Run each reference prompt at its own length; compare its valid positions with the full-length run."""
    worst = 0.0
    session = cpu_session(path)
    for row in range(len(ids)):
        length = own_length(ids[row:row + 1])
        short, short_mask = session.run(["memory", "mask"], {"input_ids": ids[row:row + 1, :length]})
        if short.shape[1] != length or not np.array_equal(short_mask[0], mask[row, :length]):
            raise EdgesegError("export verification failed: the dynamic-length graph did not keep the length or mask")
        valid = ~mask[row, :length]
        worst = max(worst, float(np.abs(short[0][valid] - memory[row, :length][valid]).max(initial=0.0)))
    if worst > tolerance:
        raise EdgesegError(f"export verification failed: at their own length the reference prompts differ from the "
                           f"full-length run by {worst:.3g} > {tolerance} on valid positions")
    return {"max_abs_diff_valid_positions": worst, "prompts": len(ids),
            "how": "each reference prompt run alone at its own length vs its valid positions at full length"}


def run_onnx(path: str | os.PathLike, input_ids: np.ndarray, threads: int | None = None) -> tuple[np.ndarray, ...]:
    memory, mask = cpu_session(path, threads).run(["memory", "mask"], {"input_ids": input_ids})
    return memory, mask


@dataclass(frozen=True)
class Fp32Reference:
    """An encoder's FP32 outputs on the reference prompts: what a bundle is checked against and ships."""

    ids: np.ndarray  # int64 [N, L], padded with the encoder's pad id
    memory: np.ndarray  # float32 [N, L, D]
    mask: np.ndarray  # bool [N, L], True = padding
    model: TextEncoder  # the FP32 CPU eval-mode model that gave them: the caller's own, or a copy of it


def fp32_reference(model: TextEncoder, prompts: Sequence[str]) -> Fp32Reference:
    """Run ``model`` in FP32 on the CPU (a copy when it is not already FP32/CPU/eval: the caller's model is
    never changed) on ``prompts``; non-finite outputs are refused."""
    ids = get_tokenizer()(list(prompts), model.context_length, model.pad_id).ids
    reference = model
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in model.parameters()) or model.training:
        reference = copy.deepcopy(model).float().cpu().eval()
    with torch.no_grad():
        memory, mask = reference(torch.from_numpy(ids))
    memory, mask = memory.float().numpy(), mask.numpy()
    if not np.isfinite(memory).all():
        raise EdgesegError(f"{model.name} gives non-finite outputs (NaN or Inf) on the reference prompts: nothing "
                           "to export")
    return Fp32Reference(ids, memory, mask, reference)


def export_bundle(
    model: TextEncoder,
    out: str | os.PathLike,
    reference_prompts: Sequence[str],
    source: dict[str, Any],
    opset: int = DEFAULT_OPSET,
    tolerance: float = EXPORT_TOLERANCE,
    dynamic_length: bool = False,
) -> dict[str, Any]:
    """Export ``model`` as an FP32 ONNX bundle at ``out``; returns the manifest.

    The ONNX model is run with ONNX Runtime on ``reference_prompts`` and compared with the torch
    model (the unfused original): a max abs difference above ``tolerance`` or any mask mismatch
    fails the export. The reference prompts, their ids and the torch FP32 outputs are saved in
    the bundle for on-device self-checks. With ``dynamic_length`` the sequence axis is dynamic
    (causal encoders only) and each reference prompt is also checked at its own length.
    """
    ref = fp32_reference(model, reference_prompts)
    ref_memory, ref_mask = ref.memory, ref.mask
    with bundle_writer(out) as tmp:
        export_onnx(model, tmp / MODEL_FILE, opset, dynamic_length)
        memory, mask = run_onnx(tmp / MODEL_FILE, ref.ids)
        if memory.shape != ref_memory.shape or not np.array_equal(mask, ref_mask):
            raise EdgesegError("export verification failed: ONNX outputs do not have the torch shapes/mask")
        max_diff = float(np.abs(memory - ref_memory).max())
        if not max_diff <= tolerance:  # NaN fails too
            raise EdgesegError(f"export verification failed: ONNX vs torch max abs diff {max_diff:.3g} > {tolerance}")
        fidelity = token_fidelity(memory, ref_memory, ref_mask)
        length_check = _dynamic_length_check(tmp / MODEL_FILE, ref.ids, memory, mask, tolerance) \
            if dynamic_length else None
        tokenizer = write_bundle_vocabulary(tmp, model.pad_id, MASK_RULES[model.padding.semantics])
        save_reference(tmp / REFERENCE, reference_prompts, ref.ids, ref_memory, ref_mask)
        manifest = finalize(tmp, {
            "encoder": model.name,
            "context_length": model.context_length,
            "position_table": getattr(model, "position_table", None),
            "semantics": model.padding.semantics,
            "precision": "fp32",
            "target": "onnx",
            "backend": "onnxruntime",
            "model": MODEL_FILE,
            **io_spec(model.context_length, model.output_dim),
            **({"dynamic_length": {"min": 1, "max": model.context_length, "check": length_check}}
               if dynamic_length else {}),
            "tokenizer": tokenizer,
            "source": source,
            "export": {"opset": opset, "exporter": "torch.onnx (TorchScript)", "verified_against": "torch fp32",
                       "max_abs_diff": max_diff, "tolerance": tolerance, "prompts": len(reference_prompts),
                       "mean_cosine": fidelity["mean_cosine"], "repmixer_fused": True},
            "calibration": None,
            "fidelity": None,
            "excluded_layers": [],
            "reference": reference_entry(len(reference_prompts)),
            "params": model.num_parameters(include_unused=False),
            "tools": tool_versions("torch", "onnx", "onnxruntime", "numpy"),
        })
    log.info("exported %s to %s (max abs diff %.2e)", model.name, out, max_diff)
    return manifest
