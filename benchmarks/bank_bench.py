#!/usr/bin/env python
"""The prompt-bank report (``benchmarks/reports/bank/``), from nothing, in one run.

Builds the ``int8`` suite's S0 FP32 and S0 INT8 static bundles with the very commands that suite
uses (random/synthetic weights, seed 0) into ``--work``, then runs the bank benchmark that
``edgeseg bench BUNDLE --bank`` runs (:func:`edgeseg.bench.bank.run_bank_bench`: bank hits next to
the encoder call in one process, Python and C API; bank-only peak RSS; sizes; float16 fidelity) on
1,000 eval prompts. Needs ``make cpp`` for the C++ rows; refuses a dirty tree::

    .venv/bin/python benchmarks/bank_bench.py      # about 10 min on 2 cores; run it on an idle machine
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from run_suite import ROOT, build_bundles, load_suite, say, tree_is_clean

BUNDLES = ("s0-fp32", "s0-int8-static")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks/work/bank", help="bundles go here")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/reports/bank", help="report folder")
    parser.add_argument("--cpp-build", type=Path, default=ROOT / "build/cpp", help="CMake build of engines/")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--allow-dirty", action="store_true", help="run on a tree with uncommitted changes")
    args = parser.parse_args(argv)
    if not (args.allow_dirty or tree_is_clean()):
        raise SystemExit("bank_bench: error: the tree has uncommitted changes (git status): commit first, so that "
                         "the report says dirty: false (or --allow-dirty for a trial run)")
    int8, _ = load_suite("int8")
    suite = {"bundles": {name: int8["bundles"][name] for name in BUNDLES}}
    build_bundles(suite, args.work.resolve(), reuse=False, dry_run=False)

    from edgeseg.bench.bank import default_prompts, run_bank_bench

    results = run_bank_bench(args.work.resolve() / "s0-int8-static", default_prompts(), args.out,
                             threads=args.threads, cpp_build=args.cpp_build, progress=say)
    for bar in results["targets"]:
        say(f"{'met' if bar['met'] else 'NOT MET'}: {bar['bar']}: {bar['measured']:.1f}{bar['unit']} "
            f"(goal {bar['goal']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
