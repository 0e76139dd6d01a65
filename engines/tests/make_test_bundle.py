"""Create the tiny FP32 ONNX bundle the C++ tests run on (ctest fixture; random/synthetic weights).

    python engines/tests/make_test_bundle.py OUT_DIR

The model is ``tests/test_encoders_mobileclip.py``'s ``tiny_student`` (an S0-shaped MobileCLIP text
encoder with width 128, seeded random weights), exported with :func:`edgeseg.export.export_bundle` -
the same bundle tests/test_export.py builds. OUT_DIR is replaced if it is already a bundle.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))


def main() -> int:
    if len(sys.argv) != 2:
        sys.stderr.write("usage: make_test_bundle.py OUT_DIR\n")
        return 2
    from test_encoders_mobileclip import S0_BLOCKS, tiny_student
    from test_export import REF_PROMPTS, SOURCE

    from edgeseg.export import export_bundle

    out = Path(sys.argv[1])
    if (out / "manifest.json").is_file():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    export_bundle(tiny_student(S0_BLOCKS, seed=0), out, REF_PROMPTS, dict(SOURCE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
