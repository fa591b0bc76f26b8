#!/usr/bin/env bash
# The real-data sweep (configs/sweep/real.yaml: codebook 64/256/1024 x mask ratio 0.3/0.5/0.7, LOSO at budgets
# 1/5/10 %) and the real-data scaling grid (configs/scaling/real.yaml: 4 model sizes x 3 token budgets, then LOSO
# at 10 %), on benchmarks/eval_real.sh's corpus and tokens (made here when missing). Both continue with --resume
# when their out folder exists.
# Usage: bash benchmarks/sweep_real.sh [DATA]   (default ../shared/data; outputs under runs/)
set -euo pipefail
cd "$(dirname "$0")/.."
# one intra-op thread per process: the trials share the cores (10-20x slower otherwise)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DATA=${1:-../shared/data}
IN=runs/eval_real
AEMG=.venv/bin/aemg
[ -f "$IN/corpus.zarr/manifest.json" ] || $AEMG prepare --source "$DATA" --out "$IN/corpus.zarr" --quiet
[ -f "$IN/tokens/tokens.json" ] || $AEMG tokenize --corpus "$IN/corpus.zarr" --out "$IN/tokens" --quiet
# eval_real.sh's labeled windows, when it has run (the same settings; else each command tokenizes its own)
WINDOWS=()
[ -f "$IN/loso/windows/tokens.json" ] && WINDOWS=("evaluation.windows_tokens=$IN/loso/windows")
resume() { [ -d "$1/tune" ] && echo --resume || true; }
$AEMG sweep --config configs/sweep/real.yaml --quiet $(resume runs/sweep-real) "${WINDOWS[@]}"
$AEMG scaling run --config configs/scaling/real.yaml --quiet $(resume runs/scaling-real) "${WINDOWS[@]}"
