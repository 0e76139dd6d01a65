"""The on-device kit copied into Jetson (and GPU) bundles, numpy + TensorRT/polygraphy only.

* ``build_engine.py``: builds and verifies the engine on the device;
* ``trt_lint.py`` + ``trt_support.json``: the static check of the ONNX against TensorRT's ONNX
  support matrix (needs the ``onnx`` package), run by ``edgeseg build --target gpu/jetson`` and by
  the script before it builds;
* ``bundlecheck.py`` + ``manifest.schema.json`` (from ``edgeseg/``): the bundle rules the script
  checks the bundle with.

They are modules of this package so that the host build uses the very same code as the device;
:data:`KIT_FILES` are the files copied into bundles (under these names).
"""

from pathlib import Path

SCRIPT = Path(__file__).with_name("build_engine.py")
LINT = Path(__file__).with_name("trt_lint.py")
SUPPORT = Path(__file__).with_name("trt_support.json")
#: the bundle rules the script checks (edgeseg's own, standard library only) and their schema
CHECKER = (Path(__file__).parents[2] / "bundlecheck.py", Path(__file__).parents[2] / "manifest.schema.json")
KIT_FILES = (SCRIPT, LINT, SUPPORT, *CHECKER)
