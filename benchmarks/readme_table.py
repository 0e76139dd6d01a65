#!/usr/bin/env python
"""Regenerate every README table from the committed results.json files (benchmarks/readme_tables.json).

Each table goes between ``<!-- table:NAME:start -->`` and ``<!-- table:NAME:end -->`` in the README
(everything else is left as it is). A results file measured on a dirty tree (``dirty: true``) or
with reused bundles is refused unless ``--allow-unclean``. Run from the repository root::

    .venv/bin/python benchmarks/readme_table.py                 # rewrite every table
    .venv/bin/python benchmarks/readme_table.py --check         # exit 1 if the README is not up to date
    .venv/bin/python benchmarks/readme_table.py --print int8-headline
    .venv/bin/python benchmarks/readme_table.py --only int8-headline --only int8-bars   # a subset
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgeseg.bench.report import README_TABLES, replace_block
from edgeseg.fileio import atomic_path

ROOT = Path(__file__).resolve().parent.parent


def unclean(results: dict) -> str | None:
    """Why a results file must not feed the README (None when it may)."""
    if results.get("dirty") is not False:
        return f"measured on a tree with uncommitted changes (dirty: {results.get('dirty')})"
    reused = (results.get("suite_run") or {}).get("reused") or []
    if reused:
        return f"bundles reused from an earlier build: {', '.join(reused)}"
    return None


def render_all(config: dict, root: Path, allow_unclean: bool, only: list[str] | None = None) -> dict[str, str]:
    known = [entry["name"] for entry in config["tables"]]
    unknown = sorted(set(only or ()) - set(known))
    if unknown:
        raise ValueError(f"unknown table(s) {', '.join(unknown)}; known: {', '.join(known)}")
    tables = {}
    for entry in config["tables"]:
        if only and entry["name"] not in only:
            continue
        path = root / entry["results"]
        results = json.loads(path.read_text(encoding="utf-8"))
        why = unclean(results)
        if why and not allow_unclean:
            raise ValueError(f"{path}: {why}; rerun it from a clean tree (or --allow-unclean)")
        tables[entry["name"]] = README_TABLES[entry["render"]](results, **entry.get("options", {}))
    return tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "benchmarks/readme_tables.json")
    parser.add_argument("--root", type=Path, default=ROOT, help="the results paths are relative to this folder")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md", help="README to update")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is out of date")
    parser.add_argument("--print", dest="print_only", metavar="NAME", help="print one table, change nothing")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="rewrite (or --check) only this table (repeatable): the others' results files are "
                             "not read, e.g. while a slow suite has not been rerun yet")
    parser.add_argument("--allow-unclean", action="store_true", help="accept dirty-tree results (not for commits)")
    args = parser.parse_args(argv)
    try:
        config = json.loads(args.config.read_text(encoding="utf-8"))
        only = [args.print_only] if args.print_only else args.only
        tables = render_all(config, args.root, args.allow_unclean, only)
        if args.print_only:
            print(tables[args.print_only])
            return 0
        text = old = args.readme.read_text(encoding="utf-8")
        for name, table in tables.items():
            text = replace_block(text, name, table)
    except (OSError, ValueError, KeyError) as exc:
        print(f"readme_table: error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if text != old:
            print(f"readme_table: {args.readme} is not up to date with the results files", file=sys.stderr)
            return 1
        return 0
    with atomic_path(args.readme) as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(f"readme_table: updated {len(tables)} table(s) in {args.readme}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
