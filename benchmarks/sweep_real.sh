#!/usr/bin/env bash
# The real-data sweep (configs/sweep/real.yaml: codebook size x mask ratio x pretraining steps on the development
# subjects) and the real-data scaling grid (configs/scaling/real.yaml: model sizes x token budgets, then LOSO at 10 %),
# on the corpus, tokens and labeled windows of benchmarks/real_inputs.sh (made when missing). Both continue with
# --resume when their out folder exists.
# Usage: bash benchmarks/sweep_real.sh [DATA]   (default ../shared/data; outputs under runs/)
set -euo pipefail
cd "$(dirname "$0")/.."
# one intra-op thread per process: the trials share the cores (10-20x slower otherwise)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DATA=${1:-../shared/data}
IN=runs/eval_real
AEMG=.venv/bin/aemg
bash benchmarks/real_inputs.sh "$DATA" "$IN"
WINDOWS=("evaluation.windows_tokens=$IN/windows")
resume() { [ -d "$1/tune" ] && echo --resume || true; }
$AEMG sweep --config configs/sweep/real.yaml --quiet $(resume runs/sweep-real) "${WINDOWS[@]}"
$AEMG scaling run --config configs/scaling/real.yaml --quiet $(resume runs/scaling-real) "${WINDOWS[@]}"
