"""Is TensorRT usable here, on which GPU (and Jetson release), and the one way to run an engine file (standalone).

Standard library only at import time (``tensorrt`` and ``polygraphy`` are imported inside the
functions that need them), so that both sides share it without one importing the other: the run
side (:mod:`edgeseg.backends`, :mod:`edgeseg.runtime.tensorrt`), the host build
(:mod:`edgeseg.targets.tensorrt`) and the on-device script, beside which it is copied into Jetson
and GPU bundles (``build_engine.py`` loads it from there; edgeseg need not be installed).
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

#: strongly typed networks and int64 inputs need TensorRT 10 (JetPack 6.1+)
MIN_TENSORRT = (10, 0)
TEGRA_RELEASE = "/etc/nv_tegra_release"
NVIDIA_DRIVER = "/proc/driver/nvidia/version"


def import_tensorrt():
    """The tensorrt module, or None (absent, or PyPI's stub without libraries)."""
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return trt if hasattr(trt, "Builder") else None  # the PyPI stub without libraries has no Builder


def tensorrt_version_tuple(version: str) -> tuple[int, int]:
    """``"10.3.0.30"`` -> ``(10, 3)`` (missing parts are 0)."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def gpu_info() -> dict | None:
    """Name, compute capability and driver of CUDA device 0 via the driver API (ctypes); None without one."""
    cuda = None
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if cuda is None or cuda.cuInit(0) != 0:
        return None
    count, device = ctypes.c_int(0), ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1 or \
            cuda.cuDeviceGet(ctypes.byref(device), 0) != 0:
        return None
    name = ctypes.create_string_buffer(256)
    cuda.cuDeviceGetName(name, 256, device)
    major, minor, version = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)  # ..._MINOR
    cuda.cuDriverGetVersion(ctypes.byref(version))
    memory = ctypes.c_size_t(0)
    getattr(cuda, "cuDeviceTotalMem_v2", cuda.cuDeviceTotalMem)(ctypes.byref(memory), device)
    return {
        "name": name.value.decode(errors="replace"),
        "compute_capability": f"{major.value}.{minor.value}",
        "cuda_driver_api": f"{version.value // 1000}.{(version.value % 1000) // 10}",
        "driver": nvidia_driver_version(),
        "memory_bytes": int(memory.value),
    }


def _search_file(path: str, pattern: str) -> re.Match | None:
    """``pattern``'s first match in the text file ``path``; None if the file cannot be read or has none."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return re.search(pattern, text)


def nvidia_driver_version(path: str = NVIDIA_DRIVER) -> str | None:
    """The NVIDIA kernel module's version (``/proc/driver/nvidia/version``), or None."""
    match = _search_file(path, r"Kernel Module(?: for [\w-]+)?\s+([\d.]+)")
    return match.group(1) if match else None


def l4t_release(path: str = TEGRA_RELEASE) -> str | None:
    """``R36.4.0`` from ``/etc/nv_tegra_release`` on a Jetson (``unknown`` if unreadable as such), else None."""
    if not Path(path).is_file():
        return None
    match = _search_file(path, r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)")
    return f"R{match.group(1)}.{match.group(2)}" if match else "unknown"


def trt_runner(trt, engine_path: str | Path, version_compatible: bool = False, name: str = "tensorrt"):
    """polygraphy's ``TrtRunner`` over a serialized engine file (not yet activated).

    ``version_compatible`` engines carry their own lean runtime, which TensorRT runs only when the
    runtime allows host code.
    """
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    def runtime():
        rt = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        if version_compatible:
            rt.engine_host_code_allowed = True
        return rt

    return TrtRunner(EngineFromBytes(BytesFromPath(str(engine_path)), runtime=runtime), name=name)
