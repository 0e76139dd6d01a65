"""Read checkpoints safely, recognise their layout, and load them strictly into an encoder.

Accepted files (``shared/reference/encoders.md`` section 4):

* ``sam3-official``: Meta's ``sam3.pt``, ``{"model": {...}}`` with the text encoder under
  ``detector.backbone.language_backbone.`` (every other key, vision, detector, tracker, is ignored);
* ``litetext-merged``: an efficientsam3 SAM3-LiteText file, the same container with a student
  (``encoder.*`` + ``projector.*``) under the same prefix and a 77-row position table;
* ``text-state-dict``: a bare text-encoder state dict (keys as in our modules), ``.pt``/``.pth``
  or ``.safetensors``, optionally with the ``backbone.language_backbone.`` prefix of the image model;
* ``edgeseg``: our own ``.safetensors`` (see :func:`save_encoder`), whose metadata names the
  encoder and its context length.

Pickles are read with ``torch.load(weights_only=True)`` only. Every key of the text encoder must
be present with the right shape and no extra key may be there: a mismatch is an
:class:`EdgesegError` naming the keys and the model the file looks like.

Students' position tables are reduced from the checkpoint's rows (77) to the context length C in
one of two ways, recorded on the model as ``position_table``:

* ``interpolate`` (default): bilinear resize along the length axis with ``align_corners=False``,
  how the released checkpoints were trained (77-row table, 16-token tokenizer);
* ``slice``: rows 0..C-1, what efficientsam3's released inference code does.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from edgeseg import __version__
from edgeseg.bundlecheck import printable
from edgeseg.encoders import TextEncoder, build_encoder, get_config, list_encoders
from edgeseg.errors import EdgesegError
from edgeseg.fileio import atomic_path

log = logging.getLogger(__name__)

SAM3_TEXT_PREFIX = "detector.backbone.language_backbone."
IMAGE_MODEL_TEXT_PREFIX = "backbone.language_backbone."
STUDENT_TABLE_KEY = "encoder.positional_embedding.pos_embed.pos_embed"
TEACHER_TABLE_KEY = "encoder.positional_embedding"
POSITION_TABLE_MODES = ("interpolate", "slice")
DEFAULT_POSITION_TABLE = "interpolate"
_SHOW = 3  # key names shown in an error message


@dataclass
class Checkpoint:
    """A text-encoder state dict read from a file, with what we know about where it came from."""

    path: Path
    layout: str
    state: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def looks_like(self) -> str | None:
        return identify(self.state)


# -- reading ------------------------------------------------------------------------------------
def _torch_load(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error says enough
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as exc:
        found = re.search(r"(?:Unsupported global|Unsupported operand)[^\n.]*", str(exc))
        detail = f" ({found.group(0).strip()})" if found else ""
        raise EdgesegError(
            f"{path} is not a plain state dict: it holds pickled objects that are not tensors, and "
            f"edgeseg only loads weights with weights_only=True{detail}"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError) as exc:
        raise EdgesegError(f"cannot read checkpoint {path}: the file is truncated or corrupt ({exc})") from exc


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise EdgesegError(f"cannot read checkpoint {path}: not a valid safetensors file ({exc})") from exc
    return state, metadata


def _as_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], bool]:
    """The tensor dict inside a loaded object, extra metadata, and whether it was nested."""
    metadata: dict[str, Any] = {}
    nested = False
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        metadata = {k: v for k, v in obj.items() if k != "model" and not isinstance(v, torch.Tensor)}
        obj, nested = obj["model"], True
    if not isinstance(obj, dict) or not obj:
        raise EdgesegError(f"{path} is not a state dict (found {type(obj).__name__}, expected a dict of tensors)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise EdgesegError(f"{path} is not a plain state dict: entries that are not tensors: {_names(bad)}")
    return obj, metadata, nested


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint file and extract the text-encoder part, identifying its layout."""
    path = Path(path)
    if not path.exists():
        raise EdgesegError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise EdgesegError(f"checkpoint {path} is not a regular file")
    if path.stat().st_size == 0:
        raise EdgesegError(f"cannot read checkpoint {path}: the file is empty")
    if path.suffix == ".safetensors":
        state, metadata = _read_safetensors(path)
        nested = False
    else:
        state, metadata, nested = _as_state_dict(_torch_load(path), path)

    for prefix in (SAM3_TEXT_PREFIX, IMAGE_MODEL_TEXT_PREFIX):
        text = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if text:
            kind = identify(text)
            layout = "sam3-official" if kind == "sam3" else "litetext-merged"
            if not nested:
                layout = "text-state-dict"
            return Checkpoint(path, layout, check_finite(text, path), metadata)
    if nested:
        raise EdgesegError(
            f"{path} holds no text encoder: no key starts with {SAM3_TEXT_PREFIX!r} "
            f"(first keys: {_names(list(state))})"
        )
    layout = "edgeseg" if metadata.get("format") == "edgeseg" else "text-state-dict"
    return Checkpoint(path, layout, check_finite(state, path), metadata)


def check_finite(state: dict[str, torch.Tensor], path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Refuse weights with NaN or Inf (they export and "verify" to garbage): one line naming the first tensor."""
    for name in sorted(state):
        tensor = state[name]
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.numel() and \
                not bool(torch.isfinite(tensor).all()):
            bad = "NaN" if bool(torch.isnan(tensor).any()) else "Inf"
            raise EdgesegError(f"{printable(path)}: tensor {printable(name)} holds {bad} values: refusing non-finite "
                               "weights")
    return state


# -- recognising --------------------------------------------------------------------------------
@functools.cache
def _reference_shapes(name: str) -> dict[str, tuple[int, ...]]:
    model = build_encoder(name, device="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _table_key(shapes: dict[str, Any]) -> str | None:
    for key in (STUDENT_TABLE_KEY, TEACHER_TABLE_KEY):
        if key in shapes:
            return key
    return None


def identify(state: dict[str, torch.Tensor]) -> str | None:
    """The registered encoder whose key set and shapes (table length aside) the state dict has."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    table = _table_key(shapes)
    for name in list_encoders():
        ref = _reference_shapes(name)
        if set(ref) != set(shapes):
            continue
        if all(ref[k] == shapes[k] for k in ref if k != table):
            return name
    return None


# -- position tables ----------------------------------------------------------------------------
def reduce_position_table(table: torch.Tensor, length: int, mode: str) -> torch.Tensor:
    """Reduce a student table ``[1, 1, T, D]`` to ``[1, 1, length, D]``.

    ``slice`` keeps rows ``0..length-1``. ``interpolate`` resizes the length axis bilinearly with
    ``align_corners=False`` (identity along D), as ``F.interpolate`` does in the reference's
    training code; for T = 77, length = 16 it reads rows 1, 6, 11, ... 74 and their successors.
    """
    if mode not in POSITION_TABLE_MODES:
        raise EdgesegError(f"unknown position-table mode {mode!r}; choose one of {', '.join(POSITION_TABLE_MODES)}")
    rows = table.shape[2]
    if rows < length:
        raise EdgesegError(f"the checkpoint's position table has {rows} rows, fewer than context length {length}")
    if rows == length:
        return table
    if mode == "slice":
        return table[:, :, :length].clone()
    resized = F.interpolate(table.float(), size=(length, table.shape[3]), mode="bilinear", align_corners=False)
    return resized.to(table.dtype)


# -- loading ------------------------------------------------------------------------------------
def _names(keys: list[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_SHOW])
    return shown + (f" ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def _describe_kind(ckpt: Checkpoint) -> str:
    kind = ckpt.looks_like
    if kind is not None:
        return f"the {kind} text encoder"
    shapes = {k: tuple(v.shape) for k, v in ckpt.state.items()}
    best, best_overlap = None, 0
    for name in list_encoders():
        overlap = len(set(_reference_shapes(name)) & set(shapes))
        if overlap > best_overlap:
            best, best_overlap = name, overlap
    return f"something closest to {best}" if best else "no known text encoder"


def infer_context_length(ckpt: Checkpoint, name: str) -> int:
    """Context length for a checkpoint when the user gave none.

    Order: our own metadata; an efficientsam3 ``meta.text_context_length``; ``ctxNN`` in the file
    name (the released files are named ``..._ctx16.pt`` / ``..._ctx32.pt``); the encoder default.
    """
    cfg = get_config(name)
    if ckpt.metadata.get("context_length"):
        return int(ckpt.metadata["context_length"])
    meta = ckpt.metadata.get("meta")
    if isinstance(meta, dict) and meta.get("text_context_length"):
        return int(meta["text_context_length"])
    table = ckpt.state.get(STUDENT_TABLE_KEY)
    match = re.search(r"ctx(\d+)", ckpt.path.name)
    if cfg["family"] != "sam3" and match and table is not None and int(match.group(1)) <= table.shape[2]:
        log.info("context length %s taken from the file name %s", match.group(1), ckpt.path.name)
        return int(match.group(1))
    if table is not None and table.shape[2] < cfg.get("checkpoint_table_rows", 0):
        return int(table.shape[2])  # a table already cut to its context length
    return int(cfg["context_length"])


def load_encoder(
    name: str,
    checkpoint: str | os.PathLike | None = None,
    context_length: int | None = None,
    position_table: str | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> TextEncoder:
    """Build the named encoder and fill it from ``checkpoint`` strictly (or seeded random weights).

    ``position_table`` (students with a 77-row table): 'interpolate' or 'slice'; None = the mode the
    checkpoint records (``position_table`` in its metadata or its ``meta`` dict), else 'interpolate'.
    """
    if position_table is not None and position_table not in POSITION_TABLE_MODES:
        raise EdgesegError(
            f"unknown position-table mode {position_table!r}; choose one of {', '.join(POSITION_TABLE_MODES)}"
        )
    get_config(name)  # unknown names fail before any file is read
    if checkpoint is None:
        return build_encoder(name, context_length, device=device, seed=seed)

    ckpt = read_checkpoint(checkpoint)
    if position_table is None:
        meta = ckpt.metadata.get("meta") if isinstance(ckpt.metadata.get("meta"), dict) else {}
        recorded = ckpt.metadata.get("position_table") or meta.get("position_table")
        position_table = recorded if recorded in POSITION_TABLE_MODES else DEFAULT_POSITION_TABLE
    if ckpt.layout == "edgeseg" and ckpt.metadata.get("encoder") not in (None, name):
        raise EdgesegError(f"{ckpt.path} is an edgeseg {ckpt.metadata['encoder']} checkpoint, not {name}")
    saved_length = ckpt.metadata.get("context_length") if ckpt.layout == "edgeseg" else None
    if context_length is None:
        context_length = infer_context_length(ckpt, name)
    elif saved_length and int(saved_length) != int(context_length) and get_config(name)["family"] != "sam3":
        raise EdgesegError(
            f"{ckpt.path} was saved at context length {saved_length}; a student runs only at the length "
            f"it was trained at, so drop --context-length or pass {saved_length}"
        )
    model = build_encoder(name, context_length, device="cpu", seed=None)
    state = dict(ckpt.state)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = [f"{ckpt.path} holds {_describe_kind(ckpt)}, not {name}"]
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_names(unexpected)}")
        raise EdgesegError("; ".join(parts))

    reduced = None
    if STUDENT_TABLE_KEY in state:
        table = state[STUDENT_TABLE_KEY]
        if table.dim() == 4 and table.shape[:2] == (1, 1) and table.shape[3] == expected[STUDENT_TABLE_KEY][3]:
            if table.shape[2] != context_length:
                reduced = position_table
            state[STUDENT_TABLE_KEY] = reduce_position_table(table, context_length, position_table)

    wrong = [f"{k} {tuple(state[k].shape)} != {expected[k]}" for k in expected if tuple(state[k].shape) != expected[k]]
    if wrong:
        raise EdgesegError(
            f"{ckpt.path} holds {_describe_kind(ckpt)}, not {name}; "
            f"{len(wrong)} mis-shaped tensor(s): {'; '.join(wrong[:3])}" + (" ..." if len(wrong) > 3 else "")
        )
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    if STUDENT_TABLE_KEY in state:
        model.position_table = ckpt.metadata.get("position_table") or reduced or "none"
    log.info("loaded %s from %s (%s layout)", name, ckpt.path, ckpt.layout)
    return model.to(device).eval()


def save_encoder(model: TextEncoder, path: str | os.PathLike) -> Path:
    """Write the model as edgeseg safetensors (atomically), with its name and context in metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    metadata = {
        "format": "edgeseg",
        "encoder": model.name,
        "context_length": str(model.context_length),
        "edgeseg_version": __version__,
    }
    if getattr(model, "position_table", None):
        metadata["position_table"] = model.position_table
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path
