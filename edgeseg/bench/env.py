"""Where and with what a benchmark ran: device, versions, git state, background load.

Every figure edgeseg publishes comes with this record (results.json ``environment``), so that a
reader can tell what was measured on which machine with which software.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
VERSIONED = ("edgeseg", "torch", "onnxruntime", "onnx", "tensorrt", "coremltools", "sam3", "numpy", "scikit-image")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The SIMD flags that decide INT8/FP32 GEMM speed (VNNI gives INT8 dot products)."""
    wanted = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "f16c")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


#: what benchmarks write (outputs, not inputs): changes there do not make a tree dirty
OUTPUT_PATHS = ("benchmarks/reports",)


def git_info(root: Path = REPO_ROOT) -> dict[str, Any]:
    """Commit of the edgeseg checkout and whether tracked files differ from it (None outside git)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
            return out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None

    tracked = git("status", "--porcelain", "--untracked-files=no")
    everything = git("status", "--porcelain", "--", ".", *[f":!{p}" for p in OUTPUT_PATHS])
    return {"commit": git("rev-parse", "HEAD"), "tracked_changes": bool(tracked) if tracked is not None else None,
            "dirty": bool(everything) if everything is not None else None,
            "dirty_how": ("git status --porcelain is not empty (tracked changes or untracked files not ignored), "
                          f"outside {', '.join(OUTPUT_PATHS)} (benchmark outputs)")}


def gpu_info() -> dict[str, Any] | None:
    """CUDA device 0 as :func:`edgeseg.trtprobe.gpu_info` reads it (driver API: name, compute capability,
    driver, memory), plus the CUDA version torch was built with when torch is loaded; None without a GPU."""
    import sys

    from edgeseg import trtprobe

    info = trtprobe.gpu_info()
    torch = sys.modules.get("torch")
    if info is not None and torch is not None:
        info["cuda"] = torch.version.cuda
    return info


def environment(threads: int) -> dict[str, Any]:
    return {
        "device": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu_info(),
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {n: version(n) for n in VERSIONED},
        "git": git_info(),
    }


class CpuMeter:
    """CPU time the rest of the machine used while a phase ran (psutil: all CPUs minus this process tree).

    ``other_cores`` is the average number of cores busy with other processes: on an idle machine
    it is near 0; a value near 1 on a 2-core machine means half the CPU went elsewhere and the
    latencies of that phase are inflated.
    """

    def __init__(self) -> None:
        self.start = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float]:
        import psutil

        total = psutil.cpu_times()
        busy = sum(total) - total.idle - getattr(total, "iowait", 0.0)
        mine = psutil.Process().cpu_times()
        own = mine.user + mine.system + getattr(mine, "children_user", 0.0) + getattr(mine, "children_system", 0.0)
        return busy, own, time.monotonic()

    def stop(self) -> dict[str, Any]:
        end = self._read()
        wall = max(end[2] - self.start[2], 1e-9)
        other = max(0.0, (end[0] - self.start[0]) - (end[1] - self.start[1]))
        return {"other_cores": other / wall, "other_cpu_s": other, "wall_s": wall, "cpus": os.cpu_count(),
                "how": "psutil.cpu_times() busy time minus this process's and its children's CPU time, over the "
                       "wall time"}


def background_load(seconds: float = 3.0) -> float | None:
    meter = CpuMeter()
    time.sleep(seconds)
    return meter.stop()["other_cores"]


def wait_for_idle(limit_s: float, threshold: float = 0.15) -> dict[str, Any]:
    start = time.perf_counter()
    load = background_load()
    while load is not None and load > threshold and time.perf_counter() - start < limit_s:
        log.warning("other processes use %.2f core(s); waiting for the machine to go idle (%.0f s left)",
                    load, limit_s - (time.perf_counter() - start))
        time.sleep(10)
        load = background_load()
    return {"other_cores_before": load, "waited_s": time.perf_counter() - start}
