"""The on-device kit copied into Jetson bundles: ``build_engine.py`` (numpy + TensorRT/polygraphy only).

It is a module of this package so that the host build (``edgeseg build --target gpu``, or
``--target jetson`` run on a Jetson) uses the very same engine-building and verification code as
the script does on the device; :data:`SCRIPT` is the file copied into bundles.
"""

from pathlib import Path

SCRIPT = Path(__file__).with_name("build_engine.py")
#: copied beside the script: the bundle rules it checks (edgeseg's own, standard library only) and their schema
CHECKER = (Path(__file__).parents[2] / "bundlecheck.py", Path(__file__).parents[2] / "manifest.schema.json")
