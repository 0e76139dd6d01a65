"""``--device`` checked before any model is built: one line for a device torch does not know, one a
command does not run on, or one this machine does not have (the machine's answers are stubbed)."""

from __future__ import annotations

import pytest
import torch

from edgeseg.devices import check_device
from edgeseg.errors import EdgesegError


def test_known_devices_give_their_type():
    assert check_device("cpu") == "cpu"
    assert check_device("cpu", ("cpu", "cuda"), "edgeseg segment") == "cpu"


@pytest.mark.parametrize("device, allowed, line", [
    ("gpu7", ("cpu", "cuda", "mps"), "unknown --device 'gpu7' (cpu, cuda, mps, cuda:N)"),
    ("cuda:x", ("cpu", "cuda"), "unknown --device 'cuda:x' (cpu, cuda, cuda:N)"),
    ("meta", ("cpu", "cuda"), "--device meta: edgeseg segment runs on cpu or cuda"),
    ("mps", ("cpu", "cuda"), "--device mps: edgeseg segment runs on cpu or cuda"),
])
def test_devices_torch_or_the_command_cannot_use(device, allowed, line):
    with pytest.raises(EdgesegError) as err:
        check_device(device, allowed, "edgeseg segment")
    assert str(err.value) == line


def test_devices_this_machine_lacks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EdgesegError, match="^--device cuda: CUDA is not available on this machine$"):
        check_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == "cuda"
    with pytest.raises(EdgesegError) as err:
        check_device("cuda:2")
    assert str(err.value) == "--device cuda:2: this machine has 2 CUDA device(s) (cuda:0..cuda:1)"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(EdgesegError, match="^--device mps: Apple's MPS is not available on this machine$"):
        check_device("mps")
