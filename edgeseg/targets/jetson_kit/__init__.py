"""The on-device kit copied into Jetson (and GPU) bundles, numpy + TensorRT/polygraphy only.

* ``build_engine.py``: builds and verifies the engine on the device;
* ``trt_lint.py`` + ``trt_support.json``: the static check of the ONNX against TensorRT's ONNX
  support matrix (needs the ``onnx`` package), run by ``edgeseg build --target gpu/jetson`` and by
  the script before it builds;
* from ``edgeseg/``, standalone modules the script loads from beside itself: ``bundlecheck.py`` +
  ``manifest.schema.json`` (the bundle rules it checks the bundle with), ``outputs.py`` (the gate
  metric, :func:`edgeseg.outputs.token_fidelity`), ``trtprobe.py`` (TensorRT and GPU probes, the
  engine runner) and ``tmpnames.py`` (pid-named temporaries, stale ones removed).

They are modules of this package so that the host build uses the very same code as the device;
:data:`KIT_FILES` are the files copied into bundles (under these names).
"""

from pathlib import Path

SCRIPT = Path(__file__).with_name("build_engine.py")
LINT = Path(__file__).with_name("trt_lint.py")
SUPPORT = Path(__file__).with_name("trt_support.json")
_EDGESEG = Path(__file__).parents[1].parent
#: the bundle rules the script checks (edgeseg's own, standard library only) and their schema
CHECKER = (_EDGESEG / "bundlecheck.py", _EDGESEG / "manifest.schema.json")
#: edgeseg's modules the script runs as they are (numpy + standard library, no edgeseg imports)
SHARED = (_EDGESEG / "outputs.py", _EDGESEG / "trtprobe.py", _EDGESEG / "tmpnames.py")
KIT_FILES = (SCRIPT, LINT, SUPPORT, *CHECKER, *SHARED)
