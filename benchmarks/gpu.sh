#!/usr/bin/env bash
# The GPU benchmark in one command: presets base, large and xl x ZeRO 0/2/3 x torch.compile off/on x the two bf16
# paths (DeepSpeed bf16 parameters; fp32 parameters under torch.autocast), on one device: tokens/s, MFU from the
# model's FLOP count, peak memory, step time. Writes benchmarks/out/gpu.json and gpu.md after every configuration;
# record the table and this command in benchmarks/RESULTS.md.
# Environment: PRESETS, ZERO, COMPILE, PRECISION (dist.precision values), OPTIMIZER (optim.implementation values:
# auto = fused on a GPU; OPTIMIZER=fused,foreach compares the AdamW kernels), BATCH (windows per step, 256: at 32 the
# large preset's step is launch-bound), TOKENS (per window, 128), STEPS, WARM, TIMEOUT (seconds per configuration).
# On a CPU (CI) `PRESETS=tiny ZERO=0 COMPILE=off PRECISION=fp32 BATCH=8 STEPS=3 WARM=1 bash benchmarks/gpu.sh` checks
# that it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" benchmarks/bench_gpu.py --presets "${PRESETS:-base,large,xl}" --zero "${ZERO:-0,2,3}" \
  --compile "${COMPILE:-off,on}" --precision "${PRECISION:-bf16,bf16-autocast}" --optimizer "${OPTIMIZER:-auto}" \
  --batch "${BATCH:-256}" --tokens "${TOKENS:-128}" --steps "${STEPS:-20}" --warm "${WARM:-5}" \
  --timeout "${TIMEOUT:-900}" \
  --out "${OUT:-benchmarks/out}/gpu.json" --md "${OUT:-benchmarks/out}/gpu.md"
