#!/usr/bin/env python
"""Regenerate the README's results table from an ``edgeseg bench`` results.json.

The table goes between ``<!-- bench-table:start -->`` and ``<!-- bench-table:end -->`` in the README
(everything else is left as it is). Run from the repository root::

    .venv/bin/python benchmarks/readme_table.py benchmarks/reports/bench/results.json
    .venv/bin/python benchmarks/readme_table.py RESULTS.json --readme README.md --batch 8
    .venv/bin/python benchmarks/readme_table.py RESULTS.json --print      # print the table only
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgeseg.bench.report import replace_table, results_table
from edgeseg.fileio import atomic_path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="results.json written by edgeseg bench")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md", help="README to update")
    parser.add_argument("--batch", default="1", help="batch size whose latency goes in the table")
    parser.add_argument("--print", dest="print_only", action="store_true", help="print the table, change nothing")
    args = parser.parse_args(argv)
    try:
        results = json.loads(args.results.read_text(encoding="utf-8"))
        table = results_table(results, args.batch)
    except (OSError, ValueError, KeyError) as exc:
        print(f"readme_table: error: {args.results}: {exc}", file=sys.stderr)
        return 2
    if args.print_only:
        print(table)
        return 0
    try:
        text = replace_table(args.readme.read_text(encoding="utf-8"), table)
    except (OSError, ValueError) as exc:
        print(f"readme_table: error: {args.readme}: {exc}", file=sys.stderr)
        return 2
    with atomic_path(args.readme) as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(f"readme_table: updated {args.readme}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
