#!/usr/bin/env python
"""C++ tokenizer vs Python tokenizer, id for id: the counts the README quotes, as a results file.

Uses the same C API calls and the same comparison as ``tests/test_engines.py`` (which asserts them):
every shipped prompt (``edgeseg/data/prompts``, all splits) and conftest's ``HARD_PROMPTS``; for each set, how many
give identical ids, how many ftfy changes (ftfy has no C++ equivalent), and whether every difference
is one of those and equals Python's ids with ftfy switched off. Needs ``make cpp``::

    .venv/bin/python benchmarks/tokenizer_parity.py          # -> benchmarks/reports/tokenizer-parity/
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import ftfy
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def parity(runtime, prompts: list[str], label: str) -> dict:
    from test_engines import python_ids

    ids, lengths = runtime.tokenize(prompts)
    ref_ids, ref_lengths = python_ids(prompts)
    same = (ids == ref_ids).all(axis=1) & (lengths == ref_lengths)
    changed = {i for i, p in enumerate(prompts) if ftfy.fix_text(p) != p}
    differ = [int(i) for i in np.flatnonzero(~same)]
    in_changed = [i for i in differ if i in changed]
    nofix_ids, nofix_lengths = python_ids([prompts[i] for i in in_changed], fix_text=False) if in_changed else ([], [])
    equal_without = sum(bool((ids[i] == nofix_ids[row]).all() and lengths[i] == nofix_lengths[row])
                        for row, i in enumerate(in_changed))
    return {"label": label, "prompts": len(prompts), "same": int(same.sum()), "ftfy_changed": len(changed),
            "differ": len(differ), "differ_outside_ftfy": len(differ) - len(in_changed),
            "equal_without_ftfy": int(equal_without), "differing_prompts": [prompts[i] for i in differ][:50]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/reports/tokenizer-parity")
    args = parser.parse_args(argv)
    from conftest import HARD_PROMPTS, calibration_prompts
    from test_engines import LIBRARY, LONG, CppRuntime, tokenizer_bundle

    from edgeseg.bench.env import environment
    from edgeseg.bench.report import tokenizer_parity_table
    from edgeseg.fileio import atomic_path

    if not LIBRARY.is_file():
        print(f"tokenizer_parity: error: {LIBRARY} missing: run `make cpp` first", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        runtime = CppRuntime(tokenizer_bundle(Path(tmp) / "bundle", LONG), tokenizer_only=True)
        sets = [parity(runtime, calibration_prompts(), "shipped prompt sets (all splits)"),
                parity(runtime, list(HARD_PROMPTS), "tests/conftest.py HARD_PROMPTS")]
        runtime.close()
    env = environment(1)
    results = {"sets": sets, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": env,
               "dirty": env["git"].get("dirty"), "machine": env["device"], "weights": "no model (tokenizer only)",
               "command": "python benchmarks/tokenizer_parity.py " + " ".join(argv or sys.argv[1:])}
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / "results.json") as tmp_file:
        tmp_file.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    table = tokenizer_parity_table(results)
    with atomic_path(args.out / "report.md") as tmp_file:
        tmp_file.write_text("# C++ vs Python tokenizer parity\n\n" + table + "\n", encoding="utf-8")
    print(table)
    return 0 if all(s["differ_outside_ftfy"] == 0 for s in sets) else 1


if __name__ == "__main__":
    sys.exit(main())
