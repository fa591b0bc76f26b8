#!/usr/bin/env bash
# The inputs every real-data script shares, each made only when missing: the harmonized corpus of the shared datasets
# (corpus.zarr), its 2 s pretraining chunks (tokens/) and the labeled 0.5 s evaluation windows (windows/).
# Usage: bash benchmarks/real_inputs.sh [DATA] [OUT]   (defaults ../shared/data, runs/eval_real)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
OUT=${2:-runs/eval_real}
AEMG=.venv/bin/aemg
EVAL_WINDOWS="windows.kind=labeled windows.length_s=0.5 windows.stride_s=0.25 windows.margin_s=0.25"
[ -f "$OUT/corpus.zarr/manifest.json" ] || $AEMG prepare --source "$DATA" --out "$OUT/corpus.zarr" --quiet
[ -f "$OUT/tokens/tokens.json" ] || $AEMG tokenize --corpus "$OUT/corpus.zarr" --out "$OUT/tokens" --quiet
# shellcheck disable=SC2086
[ -f "$OUT/windows/tokens.json" ] || $AEMG tokenize --corpus "$OUT/corpus.zarr" --out "$OUT/windows" --quiet $EVAL_WINDOWS
