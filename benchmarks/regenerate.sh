#!/usr/bin/env bash
# Regenerate every committed benchmark report and every README table, from a clean tree, in one run.
# Run on an otherwise idle machine (timings), from a fresh clone after `make setup` (and `make cpp`):
#
#   bash benchmarks/regenerate.sh            # about 2.5 hours on 2 cores, most of it building bundles
#
# Each suite builds its bundles from nothing (run_suite.py); results.json records dirty: false and what
# was built. Then the README's tables are rewritten from the results files (readme_table.py) and checked.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${EDGESEG_PYTHON:-.venv/bin/python}"
if [ -n "$(git status --porcelain -- . ':!benchmarks/reports')" ]; then
  echo "regenerate: the tree has uncommitted changes: commit (or stash) first, so that every report says dirty: false" >&2
  exit 2
fi
"$PY" benchmarks/run_suite.py int8                    # headline: sizes, latency vs both baselines, GEMM efficiency, RSS, fidelity
"$PY" benchmarks/run_suite.py cpu-full                # segmentation agreement through SAM3's image model
"$PY" benchmarks/coreml_fidelity.py                   # Core ML W8A8 / 8-bit packages (MIL emulation)
"$PY" benchmarks/cpp_bench.py                         # C++ runtime vs Python (needs make cpp)
"$PY" benchmarks/tokenizer_parity.py                  # C++ vs Python tokenizer ids (needs make cpp)
"$PY" benchmarks/bank_bench.py                        # prompt banks: hits vs the encoder, bank-only RSS (needs make cpp)
"$PY" benchmarks/distill_bench.py --out benchmarks/reports/distill
"$PY" benchmarks/readme_table.py
"$PY" benchmarks/readme_table.py --check
echo "regenerate: done; commit benchmarks/reports/ and README.md"
