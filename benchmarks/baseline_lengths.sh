#!/usr/bin/env bash
# Issue 14: how long each neural baseline (CNN, supervised Transformer, SimCLR, MAE) trains on the source subjects,
# chosen on the development folds of configs/splits/shared.yaml by the rule the AEMG arms were chosen by: the length
# (train.base_steps) with the highest mean balanced accuracy over the budgets 0/1/10/100 %, seeds 0-2, 2 folds per
# dataset. One `aemg baselines` run per length (resumable: a re-run continues where one stopped), then
# benchmarks/source_length.py prints the table and the train.source_steps overrides.
# Usage: bash benchmarks/baseline_lengths.sh [OUT] [ABLATIONS]   (defaults runs/eval_real, runs/ablate)
# Environment: LENGTHS (300 1000 3000), METHODS (cnn,transformer,simclr,mae), SEEDS (0,1,2). With METHODS set the
# run folders are named after them (dev-baselines-base3000-s012-cnn-simclr), so a length can be run in parts; give
# source_length.py every part (STEPS=FOLDER once per part).
# Timing (2 cores, 2026-12-04): 27 min at 300 steps, 62 min at 1,000.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=${1:-runs/eval_real}
ABL=${2:-runs/ablate}
LENGTHS=${LENGTHS:-300 1000 3000}
SEEDS=${SEEDS:-0,1,2}
bash benchmarks/real_inputs.sh "${DATA:-../shared/data}" "$OUT"
RUNS=()
for steps in $LENGTHS; do
  run="$ABL/dev-baselines-base$steps-s${SEEDS//,/}${METHODS:+-${METHODS//,/-}}"
  .venv/bin/aemg baselines --corpus "$OUT/corpus.zarr" --out "$run" --splits configs/splits/shared.yaml \
    --role development --methods "${METHODS:-cnn,transformer,simclr,mae}" --budgets 0,1,10,100 --seeds "$SEEDS" \
    --max-folds 2 --quiet windows_tokens="$OUT/windows" train.base_steps="$steps"
  RUNS+=("$steps=$run")
done
.venv/bin/python benchmarks/source_length.py "${RUNS[@]}" --out "$ABL/baseline-lengths.md"
