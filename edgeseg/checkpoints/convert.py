"""``edgeseg convert``: a text encoder from one checkpoint layout to another, losslessly.

Targets:

* ``transformers``: a folder with ``config.json`` (a ``Sam3Model`` config for the teacher, a
  ``Sam3LiteTextModel`` config for the students; the text config says hidden size, layers, heads,
  RepMixer on/off and the table rows) and ``model.safetensors`` with the text keys only
  (``text_encoder.*``, ``text_projection.*``); the config's ``edgeseg`` entry says so and records
  the source, context length, position-table mode and padding;
* ``efficientsam3``: a ``.pt`` ``{"model": {detector.backbone.language_backbone.*}, "meta": {...}}``
  (for the teacher this is Meta's ``sam3.pt`` text layout), ``meta`` recording the context length
  and position-table mode as efficientsam3's converter does;
* ``edgeseg``: an edgeseg ``.safetensors`` whose metadata records the encoder, context length,
  position-table mode and padding semantics of the source.

Every tensor is copied bit for bit, at its stored dtype, with all its rows: the table keeps its
T rows, so transformers <-> efficientsam3 <-> edgeseg round trips give identical tensors. The one
exception is the position-table mode ``slice`` towards transformers (which always interpolates a
table that is not C rows long): there the first C rows are written, so transformers at context C
uses exactly the rows ``slice`` selects; the output records it. Both ends are strict: the source
must hold every text key with its shape, and the written output is read back and compared with
the source tensor by tensor before it is renamed into place.

A converted checkpoint runs with its own layout's padding semantics (a transformers folder as
transformers runs it); the summary says when that differs from the source's.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from edgeseg.checkpoints import hf
from edgeseg.checkpoints.load import (
    SAM3_TEXT_PREFIX,
    STUDENT_TABLE_KEY,
    Checkpoint,
    _check_options,
    _check_variant,
    _describe_kind,
    fingerprint,
    infer_context_length,
    key_mismatch,
    read_checkpoint,
    reduce_position_table,
    write_edgeseg,
)
from edgeseg.encoders import FAMILIES, build_encoder, get_config
from edgeseg.errors import EdgesegError
from edgeseg.fileio import atomic_path, check_not_an_input, check_output_target

log = logging.getLogger(__name__)

TARGETS = ("transformers", "efficientsam3", "edgeseg")


def _expected_shapes(name: str, cfg: dict[str, Any], rows: int | None) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the encoder with a position table of ``rows`` rows (students), on the meta device."""
    with torch.device("meta"):
        if cfg["family"] == "sam3":
            model = FAMILIES["sam3"](name, cfg, int(cfg["context_length"]))
        else:
            model = FAMILIES["mobileclip"](name, {**cfg, "max_context_length": max(rows, 2)}, rows)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_complete(ckpt: Checkpoint, name: str, cfg: dict[str, Any]) -> None:
    """Every text key of ``name`` with its shape (the table at the rows the file has), nothing else."""
    table = ckpt.state.get(STUDENT_TABLE_KEY)
    rows = int(table.shape[2]) if table is not None and table.dim() == 4 else None
    expected = _expected_shapes(name, cfg, rows or 2)
    missing = sorted(set(expected) - set(ckpt.state))
    unexpected = sorted(set(ckpt.state) - set(expected))
    wrong = [f"{k} {tuple(ckpt.state[k].shape)} != {expected[k]}" for k in expected
             if k in ckpt.state and tuple(ckpt.state[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        if ckpt.layout == "transformers":
            missing = hf.transformers_names(missing, cfg["family"])
        raise key_mismatch(f"{ckpt.path} holds {_describe_kind(ckpt)}, not {name}", missing, unexpected, wrong)


def _table_for_target(state: dict[str, torch.Tensor], to: str, mode: str, length: int) -> tuple[dict, str]:
    """The state to write and the position-table record (``slice`` applied for transformers)."""
    table = state.get(STUDENT_TABLE_KEY)
    if table is None:
        return state, "none"
    rows = int(table.shape[2])
    if rows == length:
        return state, "none"
    if to == "transformers" and mode == "slice":
        state = {**state, STUDENT_TABLE_KEY: reduce_position_table(table, length, "slice").contiguous()}
        return state, f"slice applied: rows 0..{length - 1} of {rows} written (transformers uses them as they are)"
    return state, mode


def _record(name: str, ckpt: Checkpoint, length: int, table: str, padding, src: Path) -> dict[str, Any]:
    return {"encoder": name, "context_length": int(length), "position_table": table,
            "source_layout": ckpt.layout, "source_semantics": padding.semantics, "source_pad_id": padding.pad_id,
            "source": src.name, "source_sha256": fingerprint(src), "written_by": "edgeseg convert"}


def _write(to: str, state: dict[str, torch.Tensor], out: Path, name: str, cfg: dict[str, Any],
           record: dict[str, Any], padding) -> None:
    if to == "transformers":
        from safetensors.torch import save_file

        rows = state[STUDENT_TABLE_KEY].shape[2] if STUDENT_TABLE_KEY in state else cfg["max_context_length"]
        extra = {"contents": "text encoder only (text_encoder.*, text_projection.*); vision, detector and tracker "
                             "weights are not included", **record}
        config = hf.to_transformers_config(cfg, rows, extra)
        tensors = {k: v.contiguous() for k, v in hf.from_edgeseg(state, cfg["family"]).items()}
        with atomic_path(out, directory=True) as tmp:
            (tmp / hf.CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            save_file(tensors, str(tmp / hf.WEIGHTS), metadata={"format": "pt"})
            _verify(tmp, state, name, cfg)
    elif to == "efficientsam3":
        payload = {"model": {SAM3_TEXT_PREFIX + k: v.contiguous() for k, v in state.items()},
                   "meta": {"text_encoder": name, "text_context_length": record["context_length"],
                            "position_table": record["position_table"].split(" ")[0], **record}}
        with atomic_path(out) as tmp:
            torch.save(payload, tmp)
            _verify(tmp, state, name, cfg)
    else:
        extra = {k: str(v) for k, v in record.items() if k not in ("encoder", "context_length", "position_table")}
        with atomic_path(out) as tmp:
            write_edgeseg(state, tmp, name, record["context_length"], record["position_table"].split(" ")[0],
                          padding, extra)
            _verify(tmp, state, name, cfg)


def _verify(path: Path, state: dict[str, torch.Tensor], name: str, cfg: dict[str, Any]) -> None:
    """Read the written file back strictly and compare every tensor (values, dtype) with what was meant."""
    back = read_checkpoint(path)
    check_complete(back, name, cfg)
    differs = [k for k, v in state.items() if back.state[k].dtype != v.dtype or not torch.equal(back.state[k], v)]
    if differs:  # pragma: no cover - a bug, not a user error
        raise RuntimeError(f"converted checkpoint does not read back bit for bit: {differs[:3]}")


SUFFIXES = {"efficientsam3": (".pt", ".pth"), "edgeseg": (".safetensors",)}


def _check_out(src: Path, to: str, out: Path) -> None:
    check_output_target(out, directory=to == "transformers")
    check_not_an_input(out, [src])
    if src.is_dir() and src.resolve() in out.resolve().parents:
        raise EdgesegError(f"--out {out} is inside the input checkpoint folder: write the conversion somewhere else")
    if out.is_dir() and any(out.iterdir()):
        raise EdgesegError(f"{out} is a non-empty directory: refusing to replace it")
    if to in SUFFIXES and out.suffix not in SUFFIXES[to]:
        raise EdgesegError(f"--out {out}: an {to} checkpoint is a {' or '.join(SUFFIXES[to])} file")


def convert_checkpoint(name: str, src: str | os.PathLike, to: str, out: str | os.PathLike,
                       context_length: int | None = None, position_table: str | None = None,
                       config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Convert the ``name`` text encoder in ``src`` to layout ``to`` at ``out``; returns a summary.

    ``config`` (tests): an encoder config dict instead of the registered ``name``'s.
    """
    _check_options(position_table, None)
    if to not in TARGETS:
        raise EdgesegError(f"unknown target layout {to!r}; choose one of {', '.join(TARGETS)}")
    cfg = dict(config) if config is not None else get_config(name)
    src, out = Path(src), Path(out)
    _check_out(src, to, out)
    ckpt = read_checkpoint(src)
    if config is None:
        _check_variant(ckpt, name)
    check_complete(ckpt, name, cfg)
    length = int(context_length or (ckpt.metadata.get("context_length") if ckpt.layout == "edgeseg" else 0)
                 or (infer_context_length(ckpt, name) if config is None else cfg["context_length"]))
    if config is None:
        build_encoder(name, length, device="meta")  # the context length is valid for the encoder
    padding = ckpt.padding()
    state, table = _table_for_target(dict(ckpt.state), to, ckpt.table_mode(position_table), length)
    record = _record(name, ckpt, length, table, padding, src)
    _write(to, state, out, name, cfg, record, padding)
    runs_as = {"transformers": "transformers", "efficientsam3": "efficientsam3"}.get(to, padding.semantics)
    log.info("converted %s (%s) to %s at %s", src, ckpt.layout, to, out)
    return {"encoder": name, "from": ckpt.layout, "to": to, "out": str(out), "tensors": len(state),
            "context_length": length, "position_table": table, "source_semantics": padding.semantics,
            "output_semantics": runs_as, "bit_identical": not table.startswith("slice applied")}
