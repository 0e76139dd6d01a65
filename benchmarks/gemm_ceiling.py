#!/usr/bin/env python
"""MACs per call of bundles and this CPU's GEMM rate at their dominant shapes (thin CLI over edgeseg.bench.gemm).

``edgeseg bench`` measures the same for every candidate (results.json ``efficiency``); this prints it
for a few bundles without a full run::

    python benchmarks/gemm_ceiling.py WORK/ort-sam3-fp32 WORK/s0-int8-static [--threads 2] [--batch 1]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgeseg.bench import gemm


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundles", nargs="+", type=Path, help="ONNX Runtime bundles (edgeseg export/quantize)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=1)
    args = p.parse_args(argv)
    rates = gemm.RateCache(args.threads)
    print("| bundle | kernel | MACs per call | dominant product (m x k x n) | GMAC/s | GEMM floor ms |")
    print("| --- | --- | ---: | --- | ---: | ---: |")
    for bundle in args.bundles:
        manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
        kernel = gemm.bundle_backend(manifest)
        call = gemm.macs(gemm.count(gemm.onnx_matrices(bundle / manifest["model"])),
                         args.batch * int(manifest["context_length"]))
        if kernel is None or call["shape"] is None:
            print(f"| {bundle.name} | - | {call['macs_per_call']:,} | - | - | - |")
            continue
        rate = rates.rate(call["shape"], kernel)
        s = call["shape"]
        print(f"| {bundle.name} | {kernel} | {call['macs_per_call']:,} | {s['m']} x {s['k']} x {s['n']} | {rate:.1f} | "
              f"{gemm.floor_ms(call['macs_per_call'], rate):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
