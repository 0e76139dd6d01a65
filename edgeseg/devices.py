"""The torch device a command was given, checked before any model is built (torch imported on use)."""

from __future__ import annotations

from collections.abc import Sequence

from edgeseg.errors import EdgesegError

#: the torch device types edgeseg's torch code runs on
TORCH_DEVICES = ("cpu", "cuda", "mps")


def check_device(device: str, allowed: Sequence[str] = TORCH_DEVICES, command: str = "edgeseg") -> str:
    """The type (``cpu``, ``cuda``, ...) of torch device ``device`` (``--device``), or :class:`EdgesegError`
    with one line: not a device torch knows, not one ``command`` runs on (``allowed``), or not on this machine."""
    import torch

    forms = ", ".join([*allowed, "cuda:N"] if "cuda" in allowed else allowed)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise EdgesegError(f"unknown --device {device!r} ({forms})") from exc
    if dev.type not in allowed:
        raise EdgesegError(f"--device {device}: {command} runs on {' or '.join(allowed)}")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise EdgesegError(f"--device {device}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= count:
            raise EdgesegError(f"--device {device}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise EdgesegError(f"--device {device}: Apple's MPS is not available on this machine")
    return dev.type
