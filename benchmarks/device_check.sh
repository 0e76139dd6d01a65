#!/usr/bin/env bash
# One ready-made check of every CUDA path, for anyone with an NVIDIA GPU (under 8 minutes):
#   distillation steps with bf16 autocast (and a 2-process nccl run when 2 GPUs are visible),
#   `edgeseg bench --device cuda` (synchronized timing, peak GPU memory), torch CUDA vs CPU parity of
#   every encoder, and a TensorRT build when TensorRT is installed (skipped with a message otherwise).
# Writes one results file: OUT/results.json (default OUT: benchmarks/work/device-check).
# On a machine without a GPU it says "no GPU" and exits 0.
#
#   bash benchmarks/device_check.sh [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${EDGESEG_PYTHON:-.venv/bin/python}"
OUT="benchmarks/work/device-check"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "device_check: unknown option $1" >&2; exit 2 ;;
  esac
done
if ! command -v nvidia-smi >/dev/null 2>&1 && [ ! -e /dev/nvidia0 ]; then
  echo "device_check: no GPU (no nvidia-smi, no /dev/nvidia0): nothing to check on this machine"
  exit 0
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "device_check: no GPU that torch can use (torch.cuda.is_available() is False): nothing to check"
  exit 0
fi
exec timeout 480 "$PY" benchmarks/device_check.py --out "$OUT"
