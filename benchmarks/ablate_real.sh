#!/usr/bin/env bash
# Issue 14's ablations, on the development subjects of configs/splits/shared.yaml only (strict protocol): each change
# to the tokens, the pretraining objectives, the pretraining length and the fine-tuning, scored by
# benchmarks/ablation_table.py (pretrained - scratch at 1/10 %, gap to the best baseline at 10 %, probe - fine-tune
# at 100 %, pretraining cost). Every pretraining starts from the configuration the sweep of benchmarks/eval_real.sh
# selected and leaves out every development subject. Steps that finished are skipped on a re-run.
# Usage: bash benchmarks/ablate_real.sh [OUT] [ABLATIONS]   (defaults runs/eval_real, runs/ablate); the corpus, tokens
# and windows of benchmarks/real_inputs.sh are made in OUT when missing (from DATA, default ../shared/data).
# Environment: ONLY="v0-selected v1-summary ..." runs those rows only (default: every row); LONG_STEPS (10) sizes
# the long row (0 leaves it out); SEEDS (0) are the evaluation seeds: with others than 0 the development runs and the
# table go to names ending in -s<seeds> (dev-v1-summary-s012), so the one-seed runs stay; BASELINE_SEEDS (SEEDS)
# likewise for the baselines (their three seeds take about an hour here); SKIP_RECIPE_BASELINES=1 runs a calibration
# recipe's AEMG methods without its baselines (its gap to the best baseline is then not scored); LEVELS=1 also prints
# the fine-tuned and scratch accuracies per budget and their median calibration steps; SOURCE_FIT=1 how well the two
# arms' source models fit the other subjects' windows, per dataset.
# Without runs/sweep-real/selected.json (the sweep takes about 45 minutes), the base is the selection the sweep made
# and RESULTS records: configs/pretrain/tiny.yaml with codebook 256, mask 0.3 and 3,000 steps, checkpoints and
# validation every 500 steps, one worker.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=${1:-runs/eval_real}
ABL=${2:-runs/ablate}
AEMG=.venv/bin/aemg
SPLITS=configs/splits/shared.yaml
SWEEP=runs/sweep-real
LONG_STEPS=${LONG_STEPS:-10}  # the longer pretraining: this many times the selected configuration's steps (0: none)
ONLY=${ONLY:-}
SEEDS=${SEEDS:-0}
BASELINE_SEEDS=${BASELINE_SEEDS:-$SEEDS}
suffix() { [ "$1" = 0 ] || echo "-s${1//,/}"; }
S=$(suffix "$SEEDS")
BS=$(suffix "$BASELINE_SEEDS")
if [ -f "$SWEEP/selected.json" ]; then
  CHOSEN=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['selected'])" "$SWEEP/selected.json")
  BASE="$SWEEP/pretrain/$CHOSEN-g0/config.yaml"
  SELECTION=()
else
  CHOSEN="codebook 256, mask 0.3, 3000 steps"
  BASE=configs/pretrain/tiny.yaml
  SELECTION=(model.codebook_size=256 model.mask_ratio=0.3 optim.max_steps=3000 run.checkpoint_every=500
             run.val_every=500 dist.num_workers=1)
fi
echo "base: $BASE ${SELECTION[*]}"
STEPS=$(.venv/bin/python -c "from aemg_dist.train import load_pretrain_config as l; import sys
print(l(sys.argv[1], sys.argv[2:]).optim.max_steps)" "$BASE" "${SELECTION[@]}")
SUMMARY=tokens.window_summary=true
mkdir -p "$ABL"
INPUTS=(bash benchmarks/real_inputs.sh "${DATA:-../shared/data}" "$OUT")
"${INPUTS[@]}"
# tokens with the window-summary group (pretraining chunks and the labeled windows)
"${INPUTS[@]}" "$ABL/tokens-ws" "$ABL/windows-ws" "$SUMMARY"
want() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }
if want v6-rich; then  # richer token content: twice the envelope resolution, 16 spectral bands instead of 4 (60 features)
  "${INPUTS[@]}" "$ABL/tokens-rich" "$ABL/windows-rich" "$SUMMARY" tokens.n_envelope_points=32 tokens.n_bands=16
fi
EXCLUDE="$($AEMG folds --corpus "$OUT/corpus.zarr" --groups 1 --group 0 --splits "$SPLITS" --role development)"

pretrain() {  # name, tokens folder, then pretraining overrides
  local name=$1 tokens=$2; shift 2
  [ -f "$ABL/$name/export/model.safetensors" ] || $AEMG pretrain --config "$BASE" --no-ray "${SELECTION[@]}" \
    data.tokens="$tokens" run.out="$ABL/$name" data.exclude_subjects=[] "$EXCLUDE" "$@"
}
development() {  # name, windows folder, then evaluation overrides: the AEMG methods on development folds; the probe
  # reads the pooled output in every row, as when the ablation began (the probe rows below override it)
  local name=$1 windows=$2; shift 2
  $AEMG evaluate --checkpoint "$ABL/${CHECKPOINT:-$name}" --corpus "$OUT/corpus.zarr" --out "$ABL/dev-$name$S" \
    --splits "$SPLITS" --role development --methods "${METHODS:-aemg_finetune,aemg_probe,aemg_scratch}" \
    --budgets 0,1,10,100 --seeds "$SEEDS" --max-folds 2 --quiet windows_tokens="$windows" train.probe_features=window "$@"
}

baselines() {  # name suffix, then evaluation overrides: the baselines on the same folds (their windows do not depend
  # on the token settings); a calibration recipe is every method's, so its rows get baselines calibrated alike
  local name=$1; shift
  $AEMG baselines --corpus "$OUT/corpus.zarr" --out "$ABL/dev-baselines$name$BS" --splits "$SPLITS" \
    --role development --methods td_lda,cnn,transformer,simclr,mae --budgets 0,1,10,100 --seeds "$BASELINE_SEEDS" \
    --max-folds 2 --quiet windows_tokens="$OUT/windows" "$@"
}
baselines ""

TABLE=()
row() {  # name, table label, pretraining tokens, evaluation windows, then pretraining overrides
  local name=$1 label=$2 tokens=$3 windows=$4; shift 4
  want "$name" || return 0
  pretrain "$name" "$tokens" "$@"
  development "$name" "$windows"
  TABLE+=("$label=$ABL/dev-$name$S:$ABL/$name")
}

row v0-selected "v0 selected ($CHOSEN, event tokens)" "$OUT/tokens" "$OUT/windows"
row v1-summary "v1 + window summary" "$ABL/tokens-ws" "$ABL/windows-ws"
# the same recipe pretrained from another seed: how far one pretraining moves the columns (the spread of a row)
row v1-seed1 "v1, pretraining seed 1" "$ABL/tokens-ws" "$ABL/windows-ws" run.seed=1
row v2-summary-features "v2 v1 + masked feature regression" "$ABL/tokens-ws" "$ABL/windows-ws" model.feature_weight=1.0
row v3-summary-views "v3 v1 + view consistency" "$ABL/tokens-ws" "$ABL/windows-ws" model.contrast_weight=0.5
row v4-summary-features-views "v4 v1 + both" "$ABL/tokens-ws" "$ABL/windows-ws" model.feature_weight=1.0 \
  model.contrast_weight=0.5
if want v4-llrd; then  # fine-tuning only: v4's pretraining with layer-wise learning-rate decay
  pretrain v4-summary-features-views "$ABL/tokens-ws" model.feature_weight=1.0 model.contrast_weight=0.5
  CHECKPOINT=v4-summary-features-views development v4-llrd "$ABL/windows-ws" train.layer_decay=0.75
  TABLE+=("v4 + layer decay 0.75=$ABL/dev-v4-llrd$S:$ABL/v4-summary-features-views")
fi
row v6-rich "v6 v1 + richer content (32 envelope points, 16 bands)" "$ABL/tokens-rich" "$ABL/windows-rich" \
  model.n_features=60
if [ "$LONG_STEPS" -gt 0 ]; then  # LONG_STEPS=0 leaves the long pretraining out (about 30 minutes on 2 cores)
  LONG=(optim.max_steps=$((STEPS * LONG_STEPS)) run.checkpoint_every=1000 run.val_every=1000)
  row v7-long "v7 v1 x$LONG_STEPS steps" "$ABL/tokens-ws" "$ABL/windows-ws" "${LONG[@]}"
  row v7-long-seed1 "v7, pretraining seed 1" "$ABL/tokens-ws" "$ABL/windows-ws" "${LONG[@]}" run.seed=1
  # a wider, deeper encoder with the same long pretraining: d 128 x 4 layers (0.88 M parameters, 7x tiny's), about
  # 3x tiny's step time here
  WIDE=(model.d_model=128 model.n_layers=4 model.tokenizer_hidden=128)
  row v8-wide "v8 v7, d 128 x 4 layers" "$ABL/tokens-ws" "$ABL/windows-ws" "${LONG[@]}" "${WIDE[@]}"
  pretrain_named() {  # a long row's pretraining, as its row above makes it, for the rows below that reuse it
    case $1 in
      v7-long) pretrain v7-long "$ABL/tokens-ws" "${LONG[@]}" ;;
      v7-long-seed1) pretrain v7-long-seed1 "$ABL/tokens-ws" "${LONG[@]}" run.seed=1 ;;
      v8-wide) pretrain v8-wide "$ABL/tokens-ws" "${LONG[@]}" "${WIDE[@]}" ;;
    esac
  }
  if want v7-adapt-lr; then  # calibration only: v7's pretraining, adapted to the new user at 1e-3 instead of 3e-4
    pretrain_named v7-long
    CHECKPOINT=v7-long development v7-adapt-lr "$ABL/windows-ws" train.adapt_lr=1e-3
    TABLE+=("v7 + calibration lr 1e-3=$ABL/dev-v7-adapt-lr$S:$ABL/v7-long")
  fi
  for pretrained in v7-long v7-long-seed1; do  # calibration only: 30 calibration steps instead of 100
    want "$pretrained-adapt30" || continue
    pretrain_named "$pretrained"
    CHECKPOINT=$pretrained development "$pretrained-adapt30" "$ABL/windows-ws" train.adapt_steps=30
    TABLE+=("$pretrained + 30 calibration steps=$ABL/dev-$pretrained-adapt30$S:$ABL/$pretrained")
  done
  # calibration recipes, every method alike (the baselines re-run with them): early stopping on 30 % of each
  # label's calibration windows, at most 200 steps ("check"); and the same with the steps scaled to the calibration
  # size, 50 passes over the calibration windows, at least 30 steps ("check-scaled")
  CHECK=(train.adapt_check=0.3 train.adapt_steps=200 train.adapt_check_every=20)
  SCALED=("${CHECK[@]}" train.adapt_epochs=50 train.adapt_min_steps=30)
  for recipe in check check-scaled check-scaled-acc; do  # -acc: the check scored by balanced accuracy, not loss
    case $recipe in
      check) overrides=("${CHECK[@]}") ;;
      check-scaled) overrides=("${SCALED[@]}") ;;
      check-scaled-acc) overrides=("${SCALED[@]}" train.adapt_check_by=accuracy) ;;
    esac
    for pretrained in v7-long v7-long-seed1; do
      want "$pretrained-$recipe" || continue
      pretrain_named "$pretrained"
      CHECKPOINT=$pretrained development "$pretrained-$recipe" "$ABL/windows-ws" "${overrides[@]}"
      [ -n "${SKIP_RECIPE_BASELINES:-}" ] || baselines "-$recipe" "${overrides[@]}"
      TABLE+=("$pretrained + calibration $recipe=$ABL/dev-$pretrained-$recipe$S:$ABL/$pretrained:$ABL/dev-baselines-$recipe$BS")
    done
  done
fi

# the frozen probe on every block's mean and std over the window (train.probe_features=layers) instead of the pooled
# output alone: the probe only (fine-tuning and scratch do not read it), scored against the row's fine-tuning; and the
# same probe on the encoder untrained (one step at a negligible learning rate), to tell what pretraining adds to it
probe_row() {  # name, table label, checkpoint, the run whose fine-tuning it is compared with ("" for none)
  want "$1" || return 0
  CHECKPOINT=$3 METHODS=aemg_probe development "$1" "$ABL/windows-ws" train.probe_features=layers
  TABLE+=("$2=${4:+$ABL/dev-$4$S+}$ABL/dev-$1$S:$ABL/$3")
}
if [ "$LONG_STEPS" -gt 0 ]; then
  for pretrained in v7-long v7-long-seed1 v8-wide; do
    want "$pretrained-probe-layers" || continue
    pretrain_named "$pretrained"
    probe_row "$pretrained-probe-layers" "$pretrained + probe on every layer" "$pretrained" "$pretrained"
  done
  if want v7-long-head-layers; then  # the fine-tuned head (and scratch's) reads every layer's mean and spread too
    pretrain_named v7-long
    CHECKPOINT=v7-long development v7-long-head-layers "$ABL/windows-ws" train.head_features=layers
    TABLE+=("v7 + fine-tuned head on every layer=$ABL/dev-v7-long-head-layers$S:$ABL/v7-long")
  fi
  # how long the two AEMG arms train on the source subjects before calibration (train.base_steps, 300 by default; at
  # 300 the model from scratch fits those windows far worse than the pretrained one, SOURCE_FIT=1); and both arms
  # trained on views changed as between users (train.augment)
  for recipe in base1000 base3000 base1000-augment; do
    want "v7-long-$recipe" || continue
    case $recipe in
      base1000) overrides=(train.base_steps=1000) ;;
      base3000) overrides=(train.base_steps=3000) ;;
      base1000-augment) overrides=(train.base_steps=1000 train.augment=true) ;;
    esac
    pretrain_named v7-long
    CHECKPOINT=v7-long METHODS=aemg_finetune,aemg_scratch development "v7-long-$recipe" "$ABL/windows-ws" \
      "${overrides[@]}"
    TABLE+=("v7 + source steps ${recipe#base}=$ABL/dev-v7-long-$recipe$S:$ABL/v7-long")
  done
  if want v7-long-base1000 && want v7-long-base3000; then  # each arm at the length its mean over the budgets prefers
    TABLE+=("v7, fine-tuned at 1000 source steps, scratch at 3000=$ABL/dev-v7-long-base1000$S@aemg_finetune+$(
      )$ABL/dev-v7-long-base3000$S@aemg_scratch:$ABL/v7-long")
  fi
  # more unlabeled data: v7's pretraining also reading the synthetic corpus (tokenized like tokens-ws), fine-tuned at
  # the same 1,000 source steps and set against scratch at 3,000 (needs that row). Without its 64-channel grid
  # (synth_hdgrid): those windows carry 141 tokens on average against the real ones' 24, and a batch pads to its
  # longest window, so with the grid a step took about 4x v7's (2026-12-04: 900 steps in 234 s against 4,100 for v7
  # side by side); the other three simulated devices add 31,680 windows of 16 tokens on average to the real 12,537
  if want v9-synthetic && want v7-long-base3000; then
    [ -f "$ABL/synthetic.zarr/manifest.json" ] || $AEMG prepare --source synthetic --scale full \
      --out "$ABL/synthetic.zarr" --quiet
    [ -f "$ABL/tokens-synthetic-ws/tokens.json" ] || $AEMG tokenize --corpus "$ABL/synthetic.zarr" \
      --out "$ABL/tokens-synthetic-ws" --quiet "$SUMMARY"
    pretrain v9-synthetic "$ABL/tokens-ws" "${LONG[@]}" "data.extra_tokens=[$ABL/tokens-synthetic-ws]" \
      "data.exclude_datasets=[synth_hdgrid]"
    CHECKPOINT=v9-synthetic METHODS=aemg_finetune development v9-synthetic-base1000 "$ABL/windows-ws" \
      train.base_steps=1000
    TABLE+=("v9 v7 + the synthetic corpus, fine-tuned at 1000 source steps, scratch at 3000=$(
      )$ABL/dev-v9-synthetic-base1000$S@aemg_finetune+$ABL/dev-v7-long-base3000$S@aemg_scratch:$ABL/v9-synthetic")
  fi
fi
if want untrained-probe-layers || want untrained-probe-window; then
  pretrain untrained "$ABL/tokens-ws" optim.max_steps=1 optim.lr=1e-12 run.checkpoint_every=1 run.val_every=1
fi
probe_row untrained-probe-layers "untrained encoder, probe on every layer" untrained ""
if want untrained-probe-window; then
  CHECKPOINT=untrained METHODS=aemg_probe development untrained-probe-window "$ABL/windows-ws"
  TABLE+=("untrained encoder, probe on the pooled output=$ABL/dev-untrained-probe-window$S:$ABL/untrained")
fi

.venv/bin/python benchmarks/ablation_table.py --budgets 0,1,10,100 ${LEVELS:+--levels} ${PROBE_LEVELS:+--probe-levels} \
  ${SOURCE_FIT:+--source-fit} --baselines "$ABL/dev-baselines$BS" \
  --out "$ABL/ablation$S.md" "${TABLE[@]}"
