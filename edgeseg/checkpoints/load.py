"""Read checkpoints safely, recognise their layout, and load them strictly into an encoder.

Layouts (``shared/reference/encoders.md`` section 4; the package docs list what each holds):

* ``sam3``: Meta's ``sam3.pt``, ``{"model": {...}}`` with the text encoder under
  ``detector.backbone.language_backbone.`` (every other key, vision, detector, tracker, is ignored),
  or a bare teacher state dict;
* ``efficientsam3``: an efficientsam3 SAM3-LiteText file, the same container with a student
  (``encoder.*`` + ``projector.*``) under the same prefix and a 77-row position table, or a bare
  student state dict (``.pt``/``.pth``/``.safetensors``, optionally with the image model's
  ``backbone.language_backbone.`` prefix);
* ``transformers``: a Hugging Face folder (``config.json`` + ``model.safetensors`` or a sharded
  index), or its ``.safetensors`` with ``config.json`` beside it (:mod:`edgeseg.checkpoints.hf`);
* ``edgeseg``: our own ``.safetensors`` (see :func:`save_encoder`), whose metadata names the
  encoder, its context length, position-table mode and padding semantics.

Pickles are read with ``torch.load(weights_only=True)`` only. Every key of the text encoder must
be present with the right shape and no extra key may be there: a mismatch is an
:class:`EdgesegError` naming the keys and the model the file looks like.

Students' position tables (T rows) are resized to the context length C in one of two ways,
recorded on the model as ``position_table``:

* ``interpolate``: bilinear resize along the length axis with ``align_corners=False``, how the
  released checkpoints were trained (77-row table, 16-token tokenizer) and what transformers'
  ``Sam3LiteTextModel`` does at run time at any sequence length (down or up);
* ``slice``: rows 0..C-1, what efficientsam3's released inference code does.

Padding semantics (:class:`edgeseg.encoders.base.Padding`) follow the layout: ``transformers``
for transformers checkpoints (pad id from the folder's tokenizer files, else 49407), what an
edgeseg file records, ``efficientsam3`` for the rest; ``semantics=`` overrides it.
"""

from __future__ import annotations

import functools
import hashlib
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
from edgeseg.checkpoints import hf
from edgeseg.encoders import FAMILIES, TextEncoder, build_encoder, get_config, list_encoders
from edgeseg.encoders.base import SEMANTICS, Padding
from edgeseg.errors import EdgesegError
from edgeseg.fileio import atomic_path, sha256_file

log = logging.getLogger(__name__)

SAM3_TEXT_PREFIX = "detector.backbone.language_backbone."
IMAGE_MODEL_TEXT_PREFIX = "backbone.language_backbone."
STUDENT_TABLE_KEY = "encoder.positional_embedding.pos_embed.pos_embed"
TEACHER_TABLE_KEY = "encoder.positional_embedding"
POSITION_TABLE_MODES = ("interpolate", "slice")
DEFAULT_POSITION_TABLE = "interpolate"
LAYOUTS = ("sam3", "efficientsam3", "transformers", "edgeseg")
_SHOW = 3  # key names shown in an error message


@dataclass
class Checkpoint:
    """A text-encoder state dict (edgeseg keys) read from a file, with what we know about where it came from.

    ``layout`` is one of :data:`LAYOUTS`; ``container`` says how it was stored (``sam3.pt``,
    ``litetext-merged``, ``text-state-dict``, ``safetensors``, ``sharded-safetensors``, ``edgeseg``).
    For transformers checkpoints ``metadata`` holds the encoder config read from ``config.json``
    (``config``), the registered encoder it matches (``encoder``) and the tokenizer's pad id.
    """

    path: Path
    layout: str
    state: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    container: str = ""

    @property
    def looks_like(self) -> str | None:
        if self.layout == "transformers":
            return self.metadata.get("encoder")
        return identify(self.state)

    def padding(self, semantics: str | None = None) -> Padding:
        """The padding semantics to run it with: ``semantics`` if given, else its layout's / recorded ones."""
        recorded = self.metadata.get("semantics") if self.layout == "edgeseg" else None
        own = "transformers" if self.layout == "transformers" else recorded or "efficientsam3"
        chosen = semantics or own
        pad = None
        if chosen == "transformers" and self.layout == "transformers":
            pad = self.metadata.get("pad_id")
        elif chosen == own and self.layout == "edgeseg" and self.metadata.get("pad_id") not in (None, ""):
            pad = int(self.metadata["pad_id"])
        return Padding.of(chosen, pad)

    def table_mode(self, position_table: str | None) -> str:
        """``position_table`` if given, else the mode the checkpoint records, else 'interpolate'."""
        if position_table is not None:
            return position_table
        meta = self.metadata.get("meta") if isinstance(self.metadata.get("meta"), dict) else {}
        recorded = self.metadata.get("position_table") or meta.get("position_table")
        return recorded if recorded in POSITION_TABLE_MODES else DEFAULT_POSITION_TABLE


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


def _read_safetensors(path: Path, select=None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (those whose key ``select`` accepts, default all) and metadata of a safetensors file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            state = {k: fh.get_tensor(k) for k in fh.keys() if select is None or select(k)}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise EdgesegError(f"cannot read checkpoint {path}: not a valid safetensors file ({exc})") from exc
    return state, metadata


def _safetensors_keys(path: Path) -> list[str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return list(fh.keys())
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise EdgesegError(f"cannot read checkpoint {path}: not a valid safetensors file ({exc})") from exc


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


def _transformers_files(path: Path) -> tuple[Path, list[Path], str]:
    """(folder, safetensors files to read, container) of a transformers checkpoint path."""
    folder = path if path.is_dir() else path.parent
    if path.is_file():
        return folder, [path], "safetensors"
    if not (folder / hf.CONFIG).is_file():
        raise EdgesegError(f"{path} is a directory without {hf.CONFIG}: not a transformers checkpoint")
    if (folder / hf.WEIGHTS).is_file():
        return folder, [folder / hf.WEIGHTS], "safetensors"
    if not (folder / hf.INDEX).is_file():
        raise EdgesegError(f"{path} holds {hf.CONFIG} but neither {hf.WEIGHTS} nor {hf.INDEX}")
    index = hf.read_json(folder / hf.INDEX, "sharded checkpoint index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise EdgesegError(f"{folder / hf.INDEX} is not a safetensors index (no 'weight_map' of file names)")
    shards = sorted(set(weight_map.values()))
    for name in shards:
        shard = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not shard.is_file():
            raise EdgesegError(f"{folder / hf.INDEX} names shard {name}, which is missing")
    return folder, [folder / name for name in shards], "sharded-safetensors"


def read_transformers(path: Path) -> Checkpoint:
    """The text encoder of a transformers checkpoint, in edgeseg keys, with its config and pad id."""
    folder, files, container = _transformers_files(path)
    if not (folder / hf.CONFIG).is_file():
        raise EdgesegError(f"{path} holds transformers keys but there is no {hf.CONFIG} beside it")
    config = hf.read_json(folder / hf.CONFIG, "transformers config")
    model_type, text, prefix = hf.text_config(config, folder / hf.CONFIG)
    family = hf.MODEL_TYPES[model_type]
    roots = tuple(prefix + root for root in hf.TEXT_ROOTS)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(_read_safetensors(file, lambda k: k.startswith(roots))[0])
    if not state:
        raise EdgesegError(f"{path} holds no text encoder: no key starts with {roots[0]!r}")
    ours, unknown, incomplete = hf.to_edgeseg({k[len(prefix):]: v for k, v in state.items()}, family)
    if unknown or incomplete:
        raise key_mismatch(f"{path} is not a {model_type} text encoder", incomplete, unknown)
    cfg = hf.edgeseg_config(model_type, text, config, folder / hf.CONFIG)
    metadata = {"config": cfg, "encoder": hf.variant(cfg), "model_type": model_type,
                "pad_id": hf.tokenizer_pad_id(folder), "edgeseg": config.get("edgeseg")}
    return Checkpoint(path, "transformers", ours, metadata, container)


def _is_transformers_file(path: Path) -> bool:
    keys = _safetensors_keys(path)
    roots = (*hf.TEXT_ROOTS, *(hf.VIDEO_PREFIX + r for r in hf.TEXT_ROOTS))
    return any(k.startswith(roots) for k in keys)


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint file or folder and extract the text-encoder part, identifying its layout.

    Weights with NaN or Inf are refused (:func:`check_finite`)."""
    ckpt = _read_any(Path(path))
    check_finite(ckpt.state, ckpt.path)
    return ckpt


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


def _read_any(path: Path) -> Checkpoint:
    if not path.exists():
        raise EdgesegError(f"checkpoint {path} does not exist")
    if path.is_dir():
        return read_transformers(path)
    if not path.is_file():
        raise EdgesegError(f"checkpoint {path} is not a regular file")
    if path.stat().st_size == 0:
        raise EdgesegError(f"cannot read checkpoint {path}: the file is empty")
    if path.suffix == ".safetensors":
        if _is_transformers_file(path):
            return read_transformers(path)
        state, metadata = _read_safetensors(path)
        nested = False
    else:
        state, metadata, nested = _as_state_dict(_torch_load(path), path)

    for prefix in (SAM3_TEXT_PREFIX, IMAGE_MODEL_TEXT_PREFIX):
        text = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if text:
            layout = "sam3" if identify(text) == "sam3" or TEACHER_TABLE_KEY in text else "efficientsam3"
            container = ("sam3.pt" if layout == "sam3" else "litetext-merged") if nested else "text-state-dict"
            return Checkpoint(path, layout, text, metadata, container)
    if nested:
        raise EdgesegError(
            f"{path} holds no text encoder: no key starts with {SAM3_TEXT_PREFIX!r} "
            f"(first keys: {_names(list(state))})"
        )
    if metadata.get("format") == "edgeseg":
        return Checkpoint(path, "edgeseg", state, metadata, "edgeseg")
    layout = "sam3" if TEACHER_TABLE_KEY in state else "efficientsam3"
    return Checkpoint(path, layout, state, metadata, "text-state-dict")


def fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a checkpoint file; for a folder, of its config and weight files' names and hashes."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file() and (p.suffix in (".json", ".safetensors"))):
        digest.update(f"{file.name}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


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
    """Resize a student table ``[1, 1, T, D]`` to ``[1, 1, length, D]``.

    ``slice`` keeps rows ``0..length-1`` (T >= length). ``interpolate`` resizes the length axis
    bilinearly with ``align_corners=False`` (identity along D), as ``F.interpolate`` does in the
    reference's training code and in transformers' ``Sam3LiteTextTextPositionEmbedding`` (which
    also stretches a shorter table); for T = 77, length = 16 it reads rows 1, 6, 11, ... 74 and their
    successors.
    """
    if mode not in POSITION_TABLE_MODES:
        raise EdgesegError(f"unknown position-table mode {mode!r}; choose one of {', '.join(POSITION_TABLE_MODES)}")
    rows = table.shape[2]
    if rows == length:
        return table
    if mode == "slice":
        if rows < length:
            raise EdgesegError(f"the checkpoint's position table has {rows} rows, fewer than context length "
                               f"{length}: 'slice' cannot make more rows ('interpolate' can)")
        return table[:, :, :length].clone()
    resized = F.interpolate(table.float(), size=(length, table.shape[3]), mode="bilinear", align_corners=False)
    return resized.to(table.dtype)


# -- loading ------------------------------------------------------------------------------------
def _names(keys: list[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_SHOW])
    return shown + (f" ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def key_mismatch(header: str, missing=(), unexpected=(), wrong=()) -> EdgesegError:
    """One error line: what the file holds, then the missing, unexpected and mis-shaped keys."""
    parts = [header]
    if missing:
        parts.append(f"missing {len(missing)} key(s): {_names(list(missing))}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} key(s): {_names(list(unexpected))}")
    if wrong:
        parts.append(f"{len(wrong)} mis-shaped tensor(s): {'; '.join(wrong[:3])}" + (" ..." if len(wrong) > 3 else ""))
    return EdgesegError("; ".join(parts))


def _describe_kind(ckpt: Checkpoint) -> str:
    if ckpt.layout == "transformers":
        return f"{hf.describe(ckpt.metadata['config'])} (transformers {ckpt.metadata['model_type']})"
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

    Order: our own metadata; an efficientsam3 ``meta.text_context_length``; for transformers
    files, the table's rows when they are 16 or 32, else 16 (the teacher: 32); ``ctxNN`` in the
    file name (the released files are named ``..._ctx16.pt`` / ``..._ctx32.pt``); a table already
    cut to its context length; the encoder default.
    """
    cfg = get_config(name)
    if ckpt.metadata.get("context_length"):
        return int(ckpt.metadata["context_length"])
    meta = ckpt.metadata.get("meta")
    if isinstance(meta, dict) and meta.get("text_context_length"):
        return int(meta["text_context_length"])
    table = ckpt.state.get(STUDENT_TABLE_KEY)
    if ckpt.layout == "transformers" and table is not None:
        rows = int(table.shape[2])
        return rows if rows in (16, 32) else 16
    match = re.search(r"ctx(\d+)", ckpt.path.name)
    if cfg["family"] != "sam3" and match and table is not None and int(match.group(1)) <= table.shape[2]:
        log.info("context length %s taken from the file name %s", match.group(1), ckpt.path.name)
        return int(match.group(1))
    if table is not None and table.shape[2] < cfg.get("checkpoint_table_rows", 0):
        return int(table.shape[2])  # a table already cut to its context length
    return int(cfg["context_length"])


def _check_options(position_table: str | None, semantics: str | None) -> None:
    if position_table is not None and position_table not in POSITION_TABLE_MODES:
        raise EdgesegError(
            f"unknown position-table mode {position_table!r}; choose one of {', '.join(POSITION_TABLE_MODES)}"
        )
    if semantics is not None and semantics not in SEMANTICS:
        raise EdgesegError(f"unknown padding semantics {semantics!r}; choose one of {', '.join(SEMANTICS)}")


def _check_variant(ckpt: Checkpoint, name: str) -> None:
    """A file that says which encoder it holds (edgeseg metadata, transformers config) must hold ``name``."""
    if ckpt.layout == "edgeseg" and ckpt.metadata.get("encoder") not in (None, name):
        raise EdgesegError(f"{ckpt.path} is an edgeseg {ckpt.metadata['encoder']} checkpoint, not {name}")
    if ckpt.layout == "transformers" and ckpt.metadata.get("encoder") != name:
        held = ckpt.metadata.get("encoder")
        what = f"the {held} text encoder" if held else f"{hf.describe(ckpt.metadata['config'])}, which no edgeseg " \
                                                         "encoder matches"
        raise EdgesegError(f"{ckpt.path} holds {what} (transformers {ckpt.metadata['model_type']} config), not {name}")


def load_encoder(
    name: str,
    checkpoint: str | os.PathLike | None = None,
    context_length: int | None = None,
    position_table: str | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    semantics: str | None = None,
) -> TextEncoder:
    """Build the named encoder and fill it from ``checkpoint`` strictly (or seeded random weights).

    ``position_table`` (students whose table has other than C rows): 'interpolate' or 'slice';
    None = the mode the checkpoint records, else 'interpolate'. ``semantics`` ('efficientsam3' or
    'transformers'): None = the checkpoint's own (its layout's, or what an edgeseg file records).
    """
    _check_options(position_table, semantics)
    get_config(name)  # unknown names fail before any file is read
    if checkpoint is None:
        model = build_encoder(name, context_length, device=device, seed=seed)
        model.padding = Padding.of(semantics or "efficientsam3")
        return model

    ckpt = read_checkpoint(checkpoint)
    _check_variant(ckpt, name)
    saved_length = ckpt.metadata.get("context_length") if ckpt.layout == "edgeseg" else None
    if context_length is None:
        context_length = infer_context_length(ckpt, name)
    elif saved_length and int(saved_length) != int(context_length) and get_config(name)["family"] != "sam3" \
            and ckpt.padding(semantics).semantics == "efficientsam3":
        raise EdgesegError(
            f"{ckpt.path} was saved at context length {saved_length}; a student runs only at the length "
            f"it was trained at, so drop --context-length or pass {saved_length}"
        )
    model = build_encoder(name, context_length, device="cpu", seed=None)
    load_into(model, ckpt, position_table, semantics)
    log.info("loaded %s from %s (%s layout, %s semantics)", name, ckpt.path, ckpt.layout, model.padding.semantics)
    return model.to(device).eval()


def build_from_checkpoint(ckpt: Checkpoint, context_length: int | None = None, position_table: str | None = None,
                          semantics: str | None = None) -> TextEncoder:
    """An encoder built from the architecture a transformers checkpoint's config describes (any size)."""
    _check_options(position_table, semantics)
    cfg = ckpt.metadata.get("config")
    if cfg is None:
        raise EdgesegError(f"{ckpt.path} does not describe its architecture (only transformers checkpoints do)")
    name = ckpt.metadata.get("encoder") or f"{cfg['family']}-from-config"
    length = context_length or (int(cfg["context_length"]) if cfg["family"] == "sam3" else
                                infer_context_length(ckpt, "mobileclip-s0"))
    model = FAMILIES[cfg["family"]](name, cfg, length)
    return load_into(model, ckpt, position_table, semantics).eval()


def _strict_state(model: TextEncoder, ckpt: Checkpoint, mode: str) -> tuple[dict[str, torch.Tensor], str | None]:
    """The checkpoint's state checked key by key and shape by shape against ``model`` (table resized)."""
    state = dict(ckpt.state)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        if ckpt.layout == "transformers":
            missing = hf.transformers_names(missing, model.config["family"])
        raise key_mismatch(f"{ckpt.path} holds {_describe_kind(ckpt)}, not {model.name}", missing, unexpected)

    reduced = None
    if STUDENT_TABLE_KEY in state:
        table = state[STUDENT_TABLE_KEY]
        if table.dim() == 4 and table.shape[:2] == (1, 1) and table.shape[3] == expected[STUDENT_TABLE_KEY][3]:
            if table.shape[2] != model.context_length:
                reduced = mode
            state[STUDENT_TABLE_KEY] = reduce_position_table(table, model.context_length, mode)

    wrong = [f"{k} {tuple(state[k].shape)} != {expected[k]}" for k in expected if tuple(state[k].shape) != expected[k]]
    if wrong:
        raise key_mismatch(f"{ckpt.path} holds {_describe_kind(ckpt)}, not {model.name}", wrong=wrong)
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}, reduced


def load_into(model: TextEncoder, ckpt: Checkpoint, position_table: str | None = None,
              semantics: str | None = None) -> TextEncoder:
    """Fill ``model`` from ``ckpt`` strictly; set its position-table mode, padding semantics and source layout."""
    mode = ckpt.table_mode(position_table)
    state, reduced = _strict_state(model, ckpt, mode)
    model.load_state_dict(state, strict=True)
    if STUDENT_TABLE_KEY in state:
        recorded = ckpt.metadata.get("position_table") if ckpt.layout == "edgeseg" else None
        model.position_table = reduced or recorded or "none"
    model.padding = ckpt.padding(semantics)
    model.checkpoint_layout, model.checkpoint_container = ckpt.layout, ckpt.container
    return model


def save_encoder(model: TextEncoder, path: str | os.PathLike) -> Path:
    """Write the model as edgeseg safetensors (atomically), with its name, context, table mode and padding."""
    return write_edgeseg(model.state_dict(), path, model.name, model.context_length,
                         getattr(model, "position_table", None), model.padding)


def write_edgeseg(state: dict[str, torch.Tensor], path: str | os.PathLike, name: str, context_length: int,
                  position_table: str | None, padding: Padding, extra: dict[str, str] | None = None) -> Path:
    """edgeseg safetensors: tensors as given (any table rows) and the metadata the loader reads back."""
    from safetensors.torch import save_file

    path = Path(path)
    metadata = {
        "format": "edgeseg",
        "encoder": name,
        "context_length": str(context_length),
        "semantics": padding.semantics,
        "pad_id": str(padding.pad_id),
        "edgeseg_version": __version__,
        **(extra or {}),
    }
    if position_table:
        metadata["position_table"] = position_table
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path
