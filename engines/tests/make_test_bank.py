"""Create the prompt banks the C++ tests read (ctest fixture; random/synthetic weights).

    python engines/tests/make_test_bank.py BUNDLE OUT_DIR

From the tiny test bundle (make_test_bundle.py) it writes, with edgeseg's Python bank builder:
``prompts.txt`` (the bank's prompts), ``bank-f32.safetensors`` and ``bank-f16.safetensors`` (banks of
BUNDLE) and ``bankonly/`` (a bank-only bundle, float16). OUT_DIR is replaced.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

PROMPTS = ["a dog", "A Dog", "forklift", "pallet", "person", "wow!$ sign", "a player in white " * 6,
           "caf\u00e9 au lait", "the leftmost child wearing blue vest", "traffic light"]


def main() -> int:
    if len(sys.argv) != 3:
        sys.stderr.write("usage: make_test_bank.py BUNDLE OUT_DIR\n")
        return 2
    from edgeseg.runtime.bank import build_bank_only_bundle, build_from_bundle

    bundle, out = Path(sys.argv[1]), Path(sys.argv[2])
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "prompts.txt").write_text("".join(p + "\n" for p in PROMPTS), encoding="utf-8")
    build_from_bundle(bundle, PROMPTS, out / "bank-f32.safetensors", dtype="float32")
    build_from_bundle(bundle, PROMPTS, out / "bank-f16.safetensors", dtype="float16")
    build_bank_only_bundle(bundle, PROMPTS, out / "bankonly", dtype="float16")
    return 0


if __name__ == "__main__":
    sys.exit(main())
