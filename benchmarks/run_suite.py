#!/usr/bin/env python
"""Run a named benchmark suite (benchmarks/suites/NAME.json) with ``edgeseg bench``, from nothing.

A suite names the bundles it needs (each built with the ``edgeseg`` CLI into ``--work``/NAME, in the
order given; ``{work}`` and ``{out}`` in the arguments are filled in), the candidates, the
``edgeseg bench`` options, its bars (thresholds as data, checked on the results) and its report
folder. Every bundle is rebuilt on each run, so a report never rests on a stale bundle; ``--reuse``
keeps existing ones for development, and the results then record which (``suite_run.reused``), so
that ``readme_table.py`` refuses them. Run from the repository root::

    .venv/bin/python benchmarks/run_suite.py --list
    .venv/bin/python benchmarks/run_suite.py int8
    .venv/bin/python benchmarks/run_suite.py int8 --dry-run                    # print the commands only
    .venv/bin/python benchmarks/run_suite.py cpu-full -- --sam3-checkpoint sam3.pt   # extra bench options
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITES = Path(__file__).resolve().parent / "suites"


def edgeseg() -> list[str]:
    script = Path(sys.executable).parent / "edgeseg"
    return [str(script)] if script.exists() else [sys.executable, "-m", "edgeseg.cli"]


def load_suite(name: str) -> tuple[dict, Path]:
    path = SUITES / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SUITES.glob("*.json")))
        raise SystemExit(f"run_suite: error: unknown suite {name!r} (known: {known})")
    return json.loads(path.read_text(encoding="utf-8")), path


def say(message: str) -> None:
    print(f"run_suite: {message}", file=sys.stderr, flush=True)


def build_bundles(suite: dict, work: Path, reuse: bool, dry_run: bool) -> dict:
    """Build every bundle of the suite in order (fresh unless ``reuse``); what was done, per bundle."""
    record: dict = {"work": str(work), "built": {}, "reused": []}
    for key, command in suite["bundles"].items():
        out = work / key
        if reuse and (out / "manifest.json").is_file():
            say(f"reusing {out} (--reuse: the results will say so)")
            record["reused"].append(key)
            continue
        cmd = edgeseg() + [a.format(out=str(out), work=str(work)) for a in command]
        say(shlex.join(cmd))
        if dry_run:
            continue
        if out.exists():
            shutil.rmtree(out)
        work.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(work / f"{key}.build.log", "w", encoding="utf-8") as log:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
        record["built"][key] = {"command": "edgeseg " + shlex.join(cmd[len(edgeseg()):]), "returncode": rc,
                                "seconds": round(time.perf_counter() - start, 1)}
        if rc != 0:
            raise SystemExit(f"run_suite: error: building {key} failed (exit {rc}); see {work / key}.build.log")
        say(f"built {key} in {record['built'][key]['seconds']:.0f} s")
    return record


def tree_is_clean() -> bool:
    """The same test as results.json's ``dirty`` (benchmark outputs under benchmarks/reports/ do not count)."""
    from edgeseg.bench.env import git_info

    return git_info(ROOT)["dirty"] is False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", nargs="?", help="suite name (benchmarks/suites/NAME.json)")
    parser.add_argument("extra", nargs="*", help="more edgeseg bench options (after --)")
    parser.add_argument("--list", action="store_true", help="list the suites")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks/work", help="bundles go to WORK/SUITE")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: the suite's)")
    parser.add_argument("--reuse", action="store_true", help="keep bundles already built (development only)")
    parser.add_argument("--allow-dirty", action="store_true", help="run on a tree with uncommitted changes")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    if args.list or not args.suite:
        for path in sorted(SUITES.glob("*.json")):
            print(f"{path.stem:12s} {json.loads(path.read_text(encoding='utf-8'))['description']}")
        return 0
    suite, suite_file = load_suite(args.suite)
    if not (args.dry_run or args.allow_dirty or tree_is_clean()):
        raise SystemExit("run_suite: error: the tree has uncommitted changes (git status): commit first, so that the "
                         "report says dirty: false (or --allow-dirty for a trial run)")
    work = (args.work / suite["name"]).resolve()
    record = build_bundles(suite, work, args.reuse, args.dry_run)
    out = args.out or ROOT / suite["out"]
    record_file = work / "suite_run.json"
    cmd = edgeseg() + ["bench", *[c.format(work=str(work)) for c in suite["candidates"]], *suite["args"],
                       *args.extra, "--suite", suite["name"], "--bars", str(suite_file),
                       "--suite-run", str(record_file), "--out", str(out)]
    say(shlex.join(cmd))
    if args.dry_run:
        return 0
    record_file.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return subprocess.run(cmd, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
