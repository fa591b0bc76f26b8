#!/usr/bin/env bash
# Issue 14's ablations, on the development subjects of configs/splits/shared.yaml only (strict protocol): each change
# to the tokens, the pretraining objectives, the pretraining length and the fine-tuning, scored by
# benchmarks/ablation_table.py (pretrained - scratch at 1/10 %, gap to the best baseline at 10 %, probe - fine-tune
# at 100 %, pretraining cost). Every pretraining starts from the configuration the sweep of benchmarks/eval_real.sh
# selected and leaves out every development subject. Steps that finished are skipped on a re-run.
# Usage: bash benchmarks/ablate_real.sh [OUT] [ABLATIONS]   (defaults runs/eval_real, runs/ablate)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=${1:-runs/eval_real}
ABL=${2:-runs/ablate}
AEMG=.venv/bin/aemg
SPLITS=configs/splits/shared.yaml
SWEEP=runs/sweep-real
LONG_STEPS=${LONG_STEPS:-10}  # the longer pretraining: this many times the selected configuration's steps (0: none)
CHOSEN=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['selected'])" "$SWEEP/selected.json")
BASE="$SWEEP/pretrain/$CHOSEN-g0/config.yaml"
STEPS=$(.venv/bin/python -c "from omegaconf import OmegaConf; import sys; print(OmegaConf.load(sys.argv[1]).optim.max_steps)" "$BASE")
EXCLUDE="$($AEMG folds --corpus "$OUT/corpus.zarr" --groups 1 --group 0 --splits "$SPLITS" --role development)"
EVAL_WINDOWS="windows.kind=labeled windows.length_s=0.5 windows.stride_s=0.25 windows.margin_s=0.25"
SUMMARY=tokens.window_summary=true
mkdir -p "$ABL"

# tokens with the window-summary group (pretraining chunks and the labeled windows)
[ -f "$ABL/tokens-ws/tokens.json" ] || $AEMG tokenize --corpus "$OUT/corpus.zarr" --out "$ABL/tokens-ws" --quiet $SUMMARY
# shellcheck disable=SC2086
[ -f "$ABL/windows-ws/tokens.json" ] || $AEMG tokenize --corpus "$OUT/corpus.zarr" --out "$ABL/windows-ws" --quiet \
  $EVAL_WINDOWS $SUMMARY
# richer token content: twice the envelope resolution and 16 spectral bands instead of 4 (60 features instead of 36)
RICH="tokens.n_envelope_points=32 tokens.n_bands=16"
# shellcheck disable=SC2086
[ -f "$ABL/tokens-rich/tokens.json" ] || $AEMG tokenize --corpus "$OUT/corpus.zarr" --out "$ABL/tokens-rich" --quiet \
  $SUMMARY $RICH
# shellcheck disable=SC2086
[ -f "$ABL/windows-rich/tokens.json" ] || $AEMG tokenize --corpus "$OUT/corpus.zarr" --out "$ABL/windows-rich" \
  --quiet $EVAL_WINDOWS $SUMMARY $RICH

pretrain() {  # name, tokens folder, then pretraining overrides
  local name=$1 tokens=$2; shift 2
  [ -f "$ABL/$name/export/model.safetensors" ] || $AEMG pretrain --config "$BASE" --no-ray data.tokens="$tokens" \
    run.out="$ABL/$name" data.exclude_subjects=[] "$EXCLUDE" "$@"
}
development() {  # name, windows folder, then evaluation overrides: the AEMG methods on development folds
  local name=$1 windows=$2; shift 2
  $AEMG evaluate --checkpoint "$ABL/${CHECKPOINT:-$name}" --corpus "$OUT/corpus.zarr" --out "$ABL/dev-$name" \
    --splits "$SPLITS" --role development --methods aemg_finetune,aemg_probe,aemg_scratch --budgets 0,1,10,100 \
    --seeds 0 --max-folds 2 --quiet windows_tokens="$windows" "$@"
}

# the baselines on the same folds, once (their windows do not depend on the token settings)
$AEMG baselines --corpus "$OUT/corpus.zarr" --out "$ABL/dev-baselines" --splits "$SPLITS" --role development \
  --methods td_lda,cnn,transformer,simclr,mae --budgets 0,1,10,100 --seeds 0 --max-folds 2 --quiet \
  windows_tokens="$OUT/windows"

pretrain v0-selected "$OUT/tokens"
development v0-selected "$OUT/windows"
pretrain v1-summary "$ABL/tokens-ws"
development v1-summary "$ABL/windows-ws"
pretrain v2-summary-features "$ABL/tokens-ws" model.feature_weight=1.0
development v2-summary-features "$ABL/windows-ws"
pretrain v3-summary-views "$ABL/tokens-ws" model.contrast_weight=0.5
development v3-summary-views "$ABL/windows-ws"
pretrain v4-summary-features-views "$ABL/tokens-ws" model.feature_weight=1.0 model.contrast_weight=0.5
development v4-summary-features-views "$ABL/windows-ws"
pretrain v6-rich "$ABL/tokens-rich" model.n_features=60
development v6-rich "$ABL/windows-rich"
CHECKPOINT=v4-summary-features-views development v4-llrd "$ABL/windows-ws" train.layer_decay=0.75
LONG_ROW=()
if [ "$LONG_STEPS" -gt 0 ]; then  # LONG_STEPS=0 leaves the long pretraining out (hours on 2 cores)
  pretrain v5-long "$ABL/tokens-ws" model.feature_weight=1.0 model.contrast_weight=0.5 \
    optim.max_steps=$((STEPS * LONG_STEPS)) run.checkpoint_every=1000 run.val_every=1000
  development v5-long "$ABL/windows-ws"
  LONG_ROW=("v5 v4 x$LONG_STEPS steps=$ABL/dev-v5-long:$ABL/v5-long")
fi

.venv/bin/python benchmarks/ablation_table.py --baselines "$ABL/dev-baselines" --out "$ABL/ablation.md" \
  "v0 selected ($CHOSEN, event tokens)=$ABL/dev-v0-selected:$ABL/v0-selected" \
  "v1 + window summary=$ABL/dev-v1-summary:$ABL/v1-summary" \
  "v2 v1 + masked feature regression=$ABL/dev-v2-summary-features:$ABL/v2-summary-features" \
  "v3 v1 + view consistency=$ABL/dev-v3-summary-views:$ABL/v3-summary-views" \
  "v4 v1 + both=$ABL/dev-v4-summary-features-views:$ABL/v4-summary-features-views" \
  "v4 + layer decay 0.75=$ABL/dev-v4-llrd:$ABL/v4-summary-features-views" \
  "v6 v1 + richer content (32 envelope points, 16 bands)=$ABL/dev-v6-rich:$ABL/v6-rich" \
  "${LONG_ROW[@]}"
