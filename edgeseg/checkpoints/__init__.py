"""Checkpoints: read any supported layout safely, load strictly into an encoder, convert between layouts.

* :mod:`edgeseg.checkpoints.load`: reading files (``torch.load(weights_only=True)``, safetensors,
  sharded safetensors), recognising the layout (``sam3``, ``efficientsam3``, ``transformers``,
  ``edgeseg``), position tables, strict loading with the checkpoint's padding semantics;
* :mod:`edgeseg.checkpoints.hf`: the Hugging Face ``transformers`` layout (key map, config.json,
  tokenizer pad id);
* :mod:`edgeseg.checkpoints.convert`: ``edgeseg convert`` (lossless layout conversion).
"""

from edgeseg.checkpoints.load import (
    DEFAULT_POSITION_TABLE,
    IMAGE_MODEL_TEXT_PREFIX,
    LAYOUTS,
    POSITION_TABLE_MODES,
    SAM3_TEXT_PREFIX,
    STUDENT_TABLE_KEY,
    TEACHER_TABLE_KEY,
    Checkpoint,
    _torch_load,
    build_from_checkpoint,
    check_finite,
    fingerprint,
    identify,
    infer_context_length,
    load_encoder,
    load_into,
    read_checkpoint,
    reduce_position_table,
    save_encoder,
    write_edgeseg,
)

__all__ = [
    "DEFAULT_POSITION_TABLE", "IMAGE_MODEL_TEXT_PREFIX", "LAYOUTS", "POSITION_TABLE_MODES", "SAM3_TEXT_PREFIX",
    "STUDENT_TABLE_KEY", "TEACHER_TABLE_KEY", "Checkpoint", "_torch_load", "build_from_checkpoint", "check_finite",
    "fingerprint",
    "identify", "infer_context_length", "load_encoder", "load_into", "read_checkpoint", "reduce_position_table",
    "save_encoder", "write_edgeseg",
]
