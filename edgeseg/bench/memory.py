"""Memory: static (weights by dtype, bundle files) and dynamic (peak RSS of a fresh process).

Peak RSS (through ``psutil``) is that of a *fresh* process that imports what it needs, loads one
model and encodes the same prompts, so every candidate starts from nothing and what another
candidate allocated never counts. On CUDA the torch child also reports ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeseg.bench.env import REPO_ROOT

log = logging.getLogger(__name__)
MB = 1_000_000  # decimal megabytes everywhere in reports

#: the child's resident size at its end (psutil): a lower bound that the parent's samples must reach
_SELF_RSS = ("import sys, psutil\n"
              "def self_rss_bytes():\n"
              "    return psutil.Process().memory_info().rss\n")

RUNTIME_CHILD = _SELF_RSS + r"""
import json, time
t0 = time.perf_counter()
from edgeseg.runtime import load
bundle, prompts_file, threads, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
prompts = [l for l in open(prompts_file, encoding="utf-8").read().splitlines() if l.strip()]
with load(bundle, threads=threads) as runner:
    t1 = time.perf_counter()
    encoded = runner.encode(prompts, batch_size=batch)
    t2 = time.perf_counter()
sys.stdout.write(json.dumps({"torch_imported": "torch" in sys.modules, "modules": len(sys.modules),
                  "self_rss_bytes": self_rss_bytes(),
                  "prompts": int(encoded.memory.shape[0]), "memory_shape": list(encoded.memory.shape),
                  "import_load_s": t1 - t0, "encode_s": t2 - t1}) + "\n")
"""

TORCH_CHILD = _SELF_RSS + r"""
import json, time
t0 = time.perf_counter()
import torch
name, checkpoint, prompts_file, threads, batch, device = sys.argv[1:7]
torch.set_num_threads(int(threads))
from edgeseg.checkpoints import load_encoder
from edgeseg.encode import encode_prompts
prompts = [l for l in open(prompts_file, encoding="utf-8").read().splitlines() if l.strip()]
model = load_encoder(name, checkpoint or None, device=device, seed=0)
t1 = time.perf_counter()
encoded = encode_prompts(model, prompts, batch_size=int(batch))
t2 = time.perf_counter()
gpu = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
sys.stdout.write(json.dumps({"torch_imported": True, "modules": len(sys.modules),
                  "self_rss_bytes": self_rss_bytes(), "gpu_peak_allocated_bytes": gpu,
                  "prompts": int(encoded.memory.shape[0]), "memory_shape": list(encoded.memory.shape),
                  "import_load_s": t1 - t0, "encode_s": t2 - t1}) + "\n")
"""


def _tree_rss(proc: Any) -> int:
    """Resident bytes of a process and its children now (0 once it has exited)."""
    import psutil

    total = 0
    try:
        for member in [proc, *proc.children(recursive=True)]:
            total += member.memory_info().rss
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        pass
    return total


def sample_peak(proc: Any, interval_s: float = 0.005) -> int:
    """Largest resident size of ``proc`` (a ``psutil.Popen``) and its children, sampled until it exits."""
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc))
        time.sleep(interval_s)
    return peak


def run_measured(command: Sequence[str], cwd: Path = REPO_ROOT, interval_s: float = 0.005) -> dict[str, Any]:
    """Run ``command`` as a fresh process; its peak resident memory through psutil.

    The parent samples the process tree's RSS with ``psutil`` every ``interval_s`` (Linux, macOS,
    Jetson alike); the child scripts also report their own RSS when done (``self_rss_bytes``).
    ``peak_rss_bytes`` is the larger. (``getrusage``'s ``ru_maxrss`` is not used: on Linux a child
    started from a big process inherits the parent's high-water mark through fork.)
    The child's last stdout line that starts with ``{`` is parsed as JSON and merged in as ``child_*``.
    """
    import psutil

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = psutil.Popen(list(command), stdout=out, stderr=err, cwd=cwd, env=env)
        sampled = sample_peak(proc, interval_s)
        rc = proc.wait()
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    report: dict[str, Any] = {}
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            report = json.loads(line)
            break
    own = report.get("self_rss_bytes")
    peak = max(sampled, own or 0) or None
    result = {"returncode": rc, "peak_rss_bytes": peak, "peak_rss_mb": peak / MB if peak else None,
              "sampled_peak_rss_bytes": sampled, "wall_s": wall,
              "measured_with": f"psutil: RSS of the process tree sampled every {interval_s * 1e3:g} ms (and the "
                               "child's own RSS when done); the larger",
              **{f"child_{k}": v for k, v in report.items()}}
    if rc != 0:
        result["stderr_tail"] = stderr.splitlines()[-5:]
    return result


def bundle_child(bundle: Path, prompts_file: Path, threads: int, batch: int) -> list[str]:
    return [sys.executable, "-c", RUNTIME_CHILD, str(bundle), str(prompts_file), str(threads), str(batch)]


def torch_child(encoder: str, checkpoint: Path | None, prompts_file: Path, threads: int, batch: int,
                device: str = "cpu") -> list[str]:
    return [sys.executable, "-c", TORCH_CHILD, encoder, str(checkpoint or ""), str(prompts_file), str(threads),
            str(batch), device]


def torch_weights(model: Any) -> dict[str, Any]:
    """Bytes of a torch model's state dict by dtype (buffers included; shared tensors counted once)."""
    seen: set[int] = set()
    by_dtype: dict[str, int] = {}
    count = 0
    def tensors(value: Any) -> list[Any]:  # torch INT8 modules store (weight, bias) tuples of packed params
        if isinstance(value, (tuple, list)):
            return [t for v in value for t in tensors(v)]
        return [value] if hasattr(value, "data_ptr") and value is not None else []

    for tensor in [t for v in model.state_dict().values() for t in tensors(v)]:
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        name = str(tensor.dtype).replace("torch.", "")
        by_dtype[name] = by_dtype.get(name, 0) + tensor.numel() * tensor.element_size()
        count += tensor.numel()
    return {"weights_bytes": sum(by_dtype.values()), "weights_bytes_by_dtype": by_dtype, "elements": count,
            "how": "torch state_dict(): numel * element_size per dtype (parameters and buffers)"}


def onnx_weights(model_path: Path) -> dict[str, Any]:
    """Bytes of an ONNX graph's initializers (and Constant tensors) by dtype, read without running it."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path), load_external_data=True)
    by_dtype: dict[str, int] = {}
    count = 0

    def add(tensor: Any) -> None:
        nonlocal count
        array = numpy_helper.to_array(tensor)
        name = str(array.dtype)
        by_dtype[name] = by_dtype.get(name, 0) + int(array.nbytes)
        count += int(array.size)

    for init in model.graph.initializer:
        add(init)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t is not None and attr.t.dims:
                    add(attr.t)
    return {"weights_bytes": sum(by_dtype.values()), "weights_bytes_by_dtype": by_dtype, "elements": count,
            "how": "ONNX initializers and Constant tensors: nbytes per numpy dtype"}


def bundle_bytes(path: Path) -> dict[str, Any]:
    files = {p.relative_to(path).as_posix(): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}
    return {"bundle_bytes": int(sum(files.values())), "files_bytes": files}


def ratio(reference: float | None, value: float | None) -> float | None:
    """``reference / value`` (how many times smaller/faster than the reference), None when undefined."""
    if reference is None or value is None or value == 0:
        return None
    return float(reference) / float(value)
