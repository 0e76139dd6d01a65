"""Text encoders by name: the SAM3 teacher and the SAM3-LiteText MobileCLIP students.

Configs are data (``configs/<name>.json``); a family name in each config picks the module that
builds it. ``build_encoder("mobileclip-s0")`` gives a randomly initialised (seeded) model;
:func:`edgeseg.checkpoints.load_encoder` gives one with real weights.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import torch

from edgeseg.encoders.base import TextEncoder, reset_parameters_
from edgeseg.encoders.mobileclip import MobileCLIPTextEncoder
from edgeseg.encoders.sam3 import SAM3TextEncoder
from edgeseg.errors import EdgesegError

FAMILIES: dict[str, type[TextEncoder]] = {"sam3": SAM3TextEncoder, "mobileclip": MobileCLIPTextEncoder}
TEACHER = "sam3"


@functools.cache
def _configs() -> dict[str, dict[str, Any]]:
    folder = resources.files("edgeseg.encoders") / "configs"
    found = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".json"):
            found[entry.name[: -len(".json")]] = json.loads(entry.read_text(encoding="utf-8"))
    return found


def list_encoders() -> list[str]:
    """Registered encoder names, the teacher first."""
    names = sorted(_configs())
    return [TEACHER] + [n for n in names if n != TEACHER]


def get_config(name: str) -> dict[str, Any]:
    """A copy of the named encoder's config; an unknown name is a user error."""
    configs = _configs()
    if name not in configs:
        raise EdgesegError(f"unknown encoder {name!r}; choose one of: {', '.join(list_encoders())}")
    return dict(configs[name])


def resolve_context_length(name: str, context_length: int | None) -> int:
    cfg = get_config(name)
    if context_length is None:
        return int(cfg["context_length"])
    limit = int(cfg["max_context_length"])
    if not 2 <= int(context_length) <= limit:
        raise EdgesegError(f"context length {context_length} is out of range for {name}: use 2..{limit}")
    return int(context_length)


def build_encoder(
    name: str,
    context_length: int | None = None,
    *,
    device: str | torch.device | None = None,
    seed: int | None = 0,
) -> TextEncoder:
    """Construct a named encoder in eval mode.

    ``seed`` gives deterministic random weights (``None`` leaves them uninitialised, for loading a
    checkpoint right after). On the ``meta`` device nothing is allocated: use it to count
    parameters of the full-size models.
    """
    cfg = get_config(name)
    length = resolve_context_length(name, context_length)
    device = torch.device(device) if device is not None else torch.device("cpu")
    with torch.device(device):
        model = FAMILIES[cfg["family"]](name, cfg, length)
    if seed is not None and device.type != "meta":
        reset_parameters_(model, seed)
    return model.eval()


__all__ = [
    "FAMILIES", "TEACHER", "TextEncoder", "build_encoder", "get_config", "list_encoders",
    "resolve_context_length",
]
