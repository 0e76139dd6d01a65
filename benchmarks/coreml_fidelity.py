#!/usr/bin/env python
"""Core ML packages of S0 (8-bit weights, and W8A8) checked by evaluating their MIL programs in float32.

Builds ``edgeseg build --target coreml --encoder mobileclip-s0 --precision int8`` with and without
``--w8a8`` (random/synthetic weights, seed 0) into ``--work`` and collects what each manifest
records: the package's program evaluated op by op in float32 against torch FP32 on eval prompts
(an emulation, not Core ML's FP16 arithmetic), the linear/conv ops kept float, the package size.
Writes ``results.json`` and ``report.md`` (the README's Core ML table comes from it)::

    .venv/bin/python benchmarks/coreml_fidelity.py     # -> benchmarks/reports/coreml/ (about 2 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILDS = {"s0-coreml-int8": ("8-bit weights, FP16 activations", []),
          "s0-coreml-w8a8": ("8-bit weights and activations (W8A8)", ["--w8a8"])}


def build(work: Path, name: str, extra: list[str]) -> dict:
    out = work / name
    if out.exists():
        shutil.rmtree(out)
    edgeseg = Path(sys.executable).parent / "edgeseg"
    command = [str(edgeseg), "build", "--target", "coreml", "--encoder", "mobileclip-s0", "--precision", "int8",
               *extra, "--out", str(out)]
    subprocess.run(command, cwd=ROOT, check=True)
    return json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks/work/coreml")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/reports/coreml")
    args = parser.parse_args(argv)
    from edgeseg.bench.env import environment
    from edgeseg.bench.report import coreml_table
    from edgeseg.fileio import atomic_path

    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (what, extra) in BUILDS.items():
        manifest = build(args.work, name, extra)
        fid, info = manifest["fidelity"]["mil_emulation"], manifest["coreml"]
        rows.append({"name": name, "what": what, "mean_cosine": fid["mean_cosine"], "worst_cosine": fid["worst_cosine"],
                     "prompts": fid["prompts"], "float_ops": len(info.get("float_activation_ops", [])),
                     "float_activation_ops": info.get("float_activation_ops", []),
                     "package_mb": info["package_bytes"] / 1e6, "checked": info["checked"]})
    env = environment(0)
    results = {"rows": rows, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": env,
               "dirty": env["git"].get("dirty"), "machine": env["device"],
               "weights": "random/synthetic weights (seed 0)",
               "command": "python benchmarks/coreml_fidelity.py " + " ".join(argv or sys.argv[1:])}
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    with atomic_path(args.out / "report.md") as tmp:
        tmp.write_text("# Core ML packages: MIL program (float32 emulation) vs torch FP32\n\n" + coreml_table(results)
                       + "\n", encoding="utf-8")
    print(coreml_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
