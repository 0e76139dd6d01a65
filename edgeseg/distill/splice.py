"""Put a distilled student into a full SAM3 checkpoint, in the SAM3-LiteText (efficientsam3) layout.

``splice_student(sam3.pt, student.safetensors, out.pt)`` keeps every key of Meta's checkpoint
except the text encoder under ``detector.backbone.language_backbone.``, which becomes the student
(``encoder.*`` + ``projector.*``), the layout efficientsam3's ``sam3_litetext_*.pt`` files use and
:func:`edgeseg.checkpoints.read_checkpoint` reads as ``efficientsam3`` (container ``litetext-merged``).

Position table. The layout carries 77 rows; an edgeseg student has exactly C (16) trained rows.
They are written as rows ``0..C-1`` and row ``C-1`` is repeated in rows ``C..76``. So
``--position-table slice`` (rows 0..C-1, what efficientsam3's released inference code does)
reads the trained rows back bit for bit; ``interpolate`` (bilinear 77 -> C) does not and must not
be used for a spliced file. No 77-row table can serve both modes: interpolation reads rows 1 and 2
for output row 0, where slice needs trained rows 1 and 2. The file's ``meta`` records
``position_table: "slice"`` and the context length, and the splice is verified by loading it back
with :func:`edgeseg.checkpoints.load_encoder` (slice) and comparing every tensor exactly.

``splice_transformers(sam3_dir, student, out_dir)`` does the same for a transformers ``Sam3Model``
folder (``Sam3VideoModel``: its detector): every non-text key is kept, the text encoder becomes the
student in ``Sam3LiteTextModel``'s keys, and ``config.json`` becomes a ``sam3_lite_text`` config
whose text config describes the student. The table keeps the student's C rows (transformers uses
them as they are at context C and interpolates them at other lengths). Tokenizer and processor
files are copied. transformers runs the result with its own padding semantics (pad 49407,
attention masked to SOT..EOT); the summary says which semantics the student was trained with.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from edgeseg.checkpoints.load import STUDENT_TABLE_KEY
from edgeseg.errors import EdgesegError
from edgeseg.fileio import atomic_path

log = logging.getLogger(__name__)

LITETEXT_TABLE_ROWS = 77
SPLICE_POSITION_TABLE = "slice"


def _student(path: Path):
    """(name, context length, state dict, model) of a distilled student file."""
    from edgeseg.checkpoints import load_encoder, read_checkpoint
    from edgeseg.encoders import get_config

    ckpt = read_checkpoint(path)
    name = ckpt.metadata.get("encoder") if ckpt.layout == "edgeseg" else ckpt.looks_like
    if name is None:
        raise EdgesegError(f"{path} holds no known student (expected the student.safetensors of a distill run)")
    if get_config(name)["family"] == "sam3":
        raise EdgesegError(f"{path} holds the sam3 teacher, not a student")
    model = load_encoder(name, path, position_table=SPLICE_POSITION_TABLE)
    return name, model.context_length, {k: v.detach().clone() for k, v in model.state_dict().items()}, model


def widen_table(table: torch.Tensor, rows: int = LITETEXT_TABLE_ROWS) -> torch.Tensor:
    """``[1, 1, C, D]`` -> ``[1, 1, rows, D]``: the C rows first, then row C-1 repeated."""
    length = table.shape[2]
    if length > rows:
        raise EdgesegError(f"a student at context length {length} does not fit the {rows}-row LiteText table")
    pad = table[:, :, length - 1 : length].expand(-1, -1, rows - length, -1)
    return torch.cat([table, pad], dim=2).contiguous()


def splice_student(sam3: str | os.PathLike, student: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """Write ``out``: ``sam3`` with its text encoder replaced by ``student``; verify by reading it back."""
    from edgeseg.checkpoints import SAM3_TEXT_PREFIX, STUDENT_TABLE_KEY, _torch_load, load_encoder
    from edgeseg.fileio import check_output_folder

    sam3, student, out = Path(sam3), Path(student), Path(out)
    check_output_folder(out)
    if not os.access(out.parent if str(out.parent) else ".", os.W_OK):
        raise EdgesegError(f"output folder {out.parent} is not writable")
    if not sam3.is_file():
        raise EdgesegError(f"SAM3 checkpoint {sam3} does not exist")
    container = _torch_load(sam3)
    if not isinstance(container, dict) or not isinstance(container.get("model"), dict):
        raise EdgesegError(f"{sam3} is not a SAM3 checkpoint (expected {{'model': state dict}})")
    full = container["model"]
    text_keys = [k for k in full if isinstance(k, str) and k.startswith(SAM3_TEXT_PREFIX)]
    if not text_keys:
        raise EdgesegError(f"{sam3} holds no SAM3 text encoder (no key starts with {SAM3_TEXT_PREFIX!r})")
    name, context_length, state, _ = _student(student)
    merged = {k: v for k, v in full.items() if not (isinstance(k, str) and k.startswith(SAM3_TEXT_PREFIX))}
    for key, value in state.items():
        value = value.float() if value.is_floating_point() else value
        if key == STUDENT_TABLE_KEY:
            value = widen_table(value)
        merged[SAM3_TEXT_PREFIX + key] = value.contiguous()
    payload = {k: v for k, v in container.items() if k != "model"}
    payload["model"] = merged
    payload["meta"] = {"text_encoder": name, "text_context_length": int(context_length),
                       "position_table": SPLICE_POSITION_TABLE, "written_by": "edgeseg distill splice"}
    with atomic_path(out) as tmp:
        torch.save(payload, tmp)
        back = load_encoder(name, tmp, context_length, SPLICE_POSITION_TABLE).state_dict()
        bad = [k for k, v in state.items() if not torch.equal(back[k], v.float() if v.is_floating_point() else v)]
        if bad:  # pragma: no cover - a bug, not a user error
            raise RuntimeError(f"spliced checkpoint does not read back exactly: {bad[:3]}")
    log.info("spliced %s (%d text keys replaced by %d) into %s", name, len(text_keys), len(state), out)
    return {"student": name, "context_length": int(context_length), "replaced_text_keys": len(text_keys),
            "student_keys": len(state), "kept_keys": len(merged) - len(state), "position_table": SPLICE_POSITION_TABLE,
            "out": str(out)}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "processor_config.json", "preprocessor_config.json")


def _lite_text_config(config: dict[str, Any], text: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """A SAM3 ``config.json`` turned into ``Sam3LiteTextModel``'s, with the student's text config."""
    out = {k: v for k, v in config.items() if k not in ("text_config", "architectures", "model_type")}
    for key, sub in list(out.items()):  # the detector parts have LiteText twins with their own model_type
        kind = sub.get("model_type", "") if isinstance(sub, dict) else ""
        if kind.startswith("sam3_") and kind not in ("sam3_vision_model", "sam3_vit_model"):
            out[key] = {**sub, "model_type": "sam3_lite_text_" + kind[len("sam3_"):]}
    return {"architectures": ["Sam3LiteTextModel"], "model_type": "sam3_lite_text", **out, "text_config": text,
            "edgeseg": record}


def _sam3_parts(sam3: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The (detector) config and every non-text weight of a transformers SAM3 folder."""
    from edgeseg.checkpoints import hf
    from edgeseg.checkpoints.load import _read_safetensors, _transformers_files, read_transformers

    ckpt = read_transformers(sam3)  # checks config, shards and text keys
    if ckpt.metadata["model_type"] != "sam3":
        raise EdgesegError(f"{sam3} is a transformers {ckpt.metadata['model_type']} checkpoint, not SAM3 (Sam3Model "
                           "or Sam3VideoModel)")
    folder, files, _ = _transformers_files(sam3)
    config = hf.read_json(folder / hf.CONFIG, "transformers config")
    prefix = hf.VIDEO_PREFIX if config.get("model_type") == "sam3_video" else ""
    config = config.get("detector_config", {}) if prefix else config
    keep: dict[str, torch.Tensor] = {}
    for file in files:
        part, _ = _read_safetensors(file, lambda k: k.startswith(prefix) and not k[len(prefix):].startswith(
            hf.TEXT_ROOTS))
        keep.update({k[len(prefix):]: v for k, v in part.items()})
    return config, keep


def splice_transformers(sam3: str | os.PathLike, student: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """Write the transformers folder ``out``: ``sam3`` with its text encoder replaced by ``student`` (LiteText)."""
    from safetensors.torch import save_file

    from edgeseg.checkpoints import hf, load_encoder
    from edgeseg.fileio import check_not_an_input, check_output_target

    sam3, student, out = Path(sam3), Path(student), Path(out)
    check_output_target(out, directory=True)
    check_not_an_input(out, [sam3, student])
    if out.exists() and any(out.iterdir()):
        raise EdgesegError(f"{out} exists: refusing to replace it with a transformers checkpoint folder")
    config, keep = _sam3_parts(sam3)
    name, context_length, state, model = _student(student)
    padding, cfg = model.padding, dict(model.config)
    record = {"text_encoder": name, "context_length": int(context_length), "written_by": "edgeseg distill splice",
              "student_semantics": padding.semantics, "student_pad_id": padding.pad_id}
    text_config = hf.to_transformers_config(cfg, state[STUDENT_TABLE_KEY].shape[2], {})["text_config"]
    weights = {**keep, **{k: v.contiguous() for k, v in hf.from_edgeseg(state, "mobileclip").items()}}
    folder = sam3 if sam3.is_dir() else sam3.parent
    with atomic_path(out, directory=True) as tmp:
        (tmp / hf.CONFIG).write_text(json.dumps(_lite_text_config(config, text_config, record), indent=2) + "\n",
                                     encoding="utf-8")
        save_file(weights, str(tmp / hf.WEIGHTS), metadata={"format": "pt"})
        for name_ in TOKENIZER_FILES:
            if (folder / name_).is_file():
                shutil.copyfile(folder / name_, tmp / name_)
        back = load_encoder(name, tmp, context_length).state_dict()
        bad = [k for k, v in state.items() if not torch.equal(back[k], v.float() if v.is_floating_point() else v)]
        if bad:  # pragma: no cover - a bug, not a user error
            raise RuntimeError(f"spliced checkpoint does not read back exactly: {bad[:3]}")
    log.info("spliced %s into the transformers checkpoint %s", name, out)
    return {"student": name, "context_length": int(context_length), "kept_keys": len(keep),
            "student_keys": len(weights) - len(keep), "student_semantics": padding.semantics,
            "runs_in_transformers_as": "transformers", "out": str(out)}
