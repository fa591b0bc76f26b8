#!/usr/bin/env bash
# The GPU benchmark in one command, for the first machine with a GPU: presets base, large and xl x ZeRO 0/2/3, with
# and without torch.compile, bf16, on one device (tokens/s, MFU from the model's FLOP count, peak memory, step time).
# Writes benchmarks/out/gpu.json and gpu.md; record the table and this command in benchmarks/RESULTS.md.
# On a CPU (CI) `PRESETS=tiny ZERO=0 COMPILE=off STEPS=3 WARM=1 bash benchmarks/gpu.sh` checks that it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" benchmarks/bench_gpu.py --presets "${PRESETS:-base,large,xl}" --zero "${ZERO:-0,2,3}" \
  --compile "${COMPILE:-off,on}" --steps "${STEPS:-20}" --warm "${WARM:-5}" \
  --out "${OUT:-benchmarks/out}/gpu.json" --md "${OUT:-benchmarks/out}/gpu.md"
