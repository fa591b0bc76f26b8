#!/usr/bin/env bash
# The inputs every real-data script shares, each made only when missing: the harmonized corpus of the shared datasets
# (OUT/corpus.zarr), its 2 s pretraining chunks and its labeled 0.5 s evaluation windows (OUT/tokens, OUT/windows,
# or TOKENS and WINDOWS tokenized with extra `aemg tokenize` overrides: one window definition for every script).
# Usage: bash benchmarks/real_inputs.sh [DATA] [OUT] [TOKENS WINDOWS [OVERRIDE ...]]
#        (defaults ../shared/data, runs/eval_real, OUT/tokens, OUT/windows)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
OUT=${2:-runs/eval_real}
TOKENS=${3:-$OUT/tokens}
WINDOWS=${4:-$OUT/windows}
# Without overrides the tokens are event tokens, without the window-summary group (tokens.window_summary=false): the
# tokens every real-data number up to issue 14 was measured on (the sweep, the scaling grid, eval_real.sh's test
# table); give overrides (e.g. tokens.window_summary=true, today's default) to make other folders
OVERRIDES=("${@:5}")
[ $# -ge 5 ] || OVERRIDES=(tokens.window_summary=false)
AEMG=.venv/bin/aemg
EVAL_WINDOWS="windows.kind=labeled windows.length_s=0.5 windows.stride_s=0.25 windows.margin_s=0.25"
[ -f "$OUT/corpus.zarr/manifest.json" ] || $AEMG prepare --source "$DATA" --out "$OUT/corpus.zarr" --quiet
[ -f "$TOKENS/tokens.json" ] || $AEMG tokenize --corpus "$OUT/corpus.zarr" --out "$TOKENS" --quiet "${OVERRIDES[@]}"
# shellcheck disable=SC2086
[ -f "$WINDOWS/tokens.json" ] || $AEMG tokenize --corpus "$OUT/corpus.zarr" --out "$WINDOWS" --quiet $EVAL_WINDOWS \
  "${OVERRIDES[@]}"
