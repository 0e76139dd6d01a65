"""Memory: static (weights by dtype, bundle files) and dynamic (peak RSS of a fresh process).

Peak RSS is the kernel's high-water mark of a *fresh* process that imports what it needs, loads one
model and encodes the same prompts, so every candidate starts from nothing and what another
candidate allocated never counts. On CUDA the torch child also reports ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeseg.bench.env import REPO_ROOT

log = logging.getLogger(__name__)
MB = 1_000_000  # decimal megabytes everywhere in reports

RUNTIME_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from edgeseg.runtime import load
bundle, prompts_file, threads, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
prompts = [l for l in open(prompts_file, encoding="utf-8").read().splitlines() if l.strip()]
with load(bundle, threads=threads) as runner:
    t1 = time.perf_counter()
    encoded = runner.encode(prompts, batch_size=batch)
    t2 = time.perf_counter()
sys.stdout.write(json.dumps({"torch_imported": "torch" in sys.modules, "modules": len(sys.modules),
                  "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "prompts": int(encoded.memory.shape[0]), "memory_shape": list(encoded.memory.shape),
                  "import_load_s": t1 - t0, "encode_s": t2 - t1}) + "\n")
"""

TORCH_CHILD = r"""
import json, resource, sys, time
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
                  "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "gpu_peak_allocated_bytes": gpu,
                  "prompts": int(encoded.memory.shape[0]), "memory_shape": list(encoded.memory.shape),
                  "import_load_s": t1 - t0, "encode_s": t2 - t1}) + "\n")
"""

TIME_V = "/usr/bin/time"


def run_measured(command: Sequence[str], cwd: Path = REPO_ROOT) -> dict[str, Any]:
    """Run ``command`` as a fresh process; its peak RSS from ``/usr/bin/time -v`` or ``os.wait4``.

    The child's last stdout line that starts with ``{`` is parsed as JSON and merged in as ``child_*``.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        if os.path.exists(TIME_V):
            rc = subprocess.run([TIME_V, "-v", *command], stdout=out, stderr=err, cwd=cwd, env=env).returncode
            err.seek(0)
            stderr = err.read()
            match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
            maxrss_kb = int(match.group(1)) if match else None
            how = "/usr/bin/time -v 'Maximum resident set size' of the fresh process"
        else:
            proc = subprocess.Popen(list(command), stdout=out, stderr=err, cwd=cwd, env=env)
            _, status, usage = os.wait4(proc.pid, 0)
            rc, maxrss_kb = os.waitstatus_to_exitcode(status), usage.ru_maxrss
            err.seek(0)
            stderr = err.read()
            how = "os.wait4 rusage ru_maxrss of the fresh process"
        wall = time.perf_counter() - start
        out.seek(0)
        stdout = out.read()
    report: dict[str, Any] = {}
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            report = json.loads(line)
            break
    result = {"returncode": rc, "peak_rss_kb": maxrss_kb, "peak_rss_mb": maxrss_kb * 1024 / MB if maxrss_kb else None,
              "wall_s": wall, "measured_with": how, **{f"child_{k}": v for k, v in report.items()}}
    if rc != 0:
        result["stderr_tail"] = [line for line in stderr.splitlines() if "Command being timed" not in line][-5:]
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
    for tensor in model.state_dict().values():
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
