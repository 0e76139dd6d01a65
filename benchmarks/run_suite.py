#!/usr/bin/env python
"""Run a named benchmark suite (benchmarks/suites/NAME.json) with ``edgeseg bench``.

A suite names the bundles it needs (built with the ``edgeseg`` CLI into ``--work`` when absent; an
existing folder with a manifest.json is reused as it is), the candidates and the ``edgeseg bench``
options. Run from the repository root::

    .venv/bin/python benchmarks/run_suite.py --list
    .venv/bin/python benchmarks/run_suite.py cpu-quick
    .venv/bin/python benchmarks/run_suite.py cpu-full --dry-run          # print the commands only
    .venv/bin/python benchmarks/run_suite.py cpu-full -- --sam3-checkpoint sam3.pt   # extra bench options
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITES = Path(__file__).resolve().parent / "suites"


def edgeseg() -> list[str]:
    script = Path(sys.executable).parent / "edgeseg"
    return [str(script)] if script.exists() else [sys.executable, "-m", "edgeseg.cli"]


def load_suite(name: str) -> dict:
    path = SUITES / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SUITES.glob("*.json")))
        raise SystemExit(f"run_suite: error: unknown suite {name!r} (known: {known})")
    return json.loads(path.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", nargs="?", help="suite name (benchmarks/suites/NAME.json)")
    parser.add_argument("extra", nargs="*", help="more edgeseg bench options (after --)")
    parser.add_argument("--list", action="store_true", help="list the suites")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks/work", help="bundles (git-ignored)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: the suite's)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    if args.list or not args.suite:
        for path in sorted(SUITES.glob("*.json")):
            suite = json.loads(path.read_text(encoding="utf-8"))
            print(f"{path.stem:10s} {suite['description']}")
        return 0
    suite = load_suite(args.suite)
    work = args.work.resolve()
    fill = {"work": str(work)}
    for key, command in suite["bundles"].items():
        out = work / key
        if (out / "manifest.json").is_file():
            print(f"run_suite: reusing {out}", file=sys.stderr)
            continue
        cmd = edgeseg() + [a.format(out=str(out), **fill) for a in command]
        print("run_suite: " + shlex.join(cmd), file=sys.stderr)
        if not args.dry_run:
            work.mkdir(parents=True, exist_ok=True)
            rc = subprocess.run(cmd, cwd=ROOT).returncode
            if rc != 0:
                print(f"run_suite: error: building {key} failed (exit {rc})", file=sys.stderr)
                return rc
    out = args.out or ROOT / suite["out"]
    cmd = edgeseg() + ["bench", *[c.format(**fill) for c in suite["candidates"]], *suite["args"], *args.extra,
                       "--suite", suite["name"], "--out", str(out)]
    print("run_suite: " + shlex.join(cmd), file=sys.stderr)
    if args.dry_run:
        return 0
    return subprocess.run(cmd, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
