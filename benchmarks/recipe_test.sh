#!/usr/bin/env bash
# Issue 14: a pretraining recipe chosen on the development subjects (benchmarks/ablate_real.sh) evaluated on the test
# subjects, the way benchmarks/eval_real.sh evaluates the sweep's choice: pretrained twice, each time without one half
# of the subjects (pt-g0 / pt-g1, the two side by side), then the AEMG methods on the same test folds, seeds and
# windows settings. The baselines run in the same evaluation unless eval_real.sh's test run exists (OUT/test); then
# benchmarks/compare_runs.py sets the recipe against it.
# With LODO=1 the recipe is also pretrained without 3DC and without Côté-Allard (side by side), and fine-tuned on
# those datasets' test folds, for the unseen-device target. benchmarks/targets_table.py prints issue 14's targets.
# PART=aemg or PART=baselines runs only those methods (to its own folder, -aemg / -baselines), to split an evaluation
# that does not fit one sitting; the targets table pools every test folder of the recipe (all seeds and parts).
# EVAL_CONFIG=configs/evaluate/real.yaml evaluates with that config (each method's source length, chosen on the
# development folds) to folders named -real; without it every method trains train.base_steps (300) on the source.
# Usage: RECIPE=v1-summary TOKENS=runs/ablate/tokens-ws WINDOWS=runs/ablate/windows-ws FOLDS=6 SEEDS=0 [LODO=1] \
#          [PART=aemg|baselines] [EVAL_CONFIG=...] bash benchmarks/recipe_test.sh [OUT] [ABLATIONS]
#        (defaults runs/eval_real, runs/ablate)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=${1:-runs/eval_real}
ABL=${2:-runs/ablate}
RECIPE=${RECIPE:-v1-summary}  # a pretraining run of ablate_real.sh: its resolved config is the recipe
TOKENS=${TOKENS:-$ABL/tokens-ws}
WINDOWS=${WINDOWS:-$ABL/windows-ws}
FOLDS=${FOLDS:-6}
SEEDS=${SEEDS:-0}
AEMG=.venv/bin/aemg
SPLITS=configs/splits/shared.yaml
S=$([ "$SEEDS" = 0 ] || echo "-s${SEEDS//,/}")  # other seeds than 0 go to their own folders (test-v7-long-s12)
CONFIG=()
T="$ABL/test-$RECIPE"  # every test folder of the recipe starts so
if [ -n "${EVAL_CONFIG:-}" ]; then  # the evaluation recipe: its own folders, never mixed with base_steps runs
  CONFIG=(--config "$EVAL_CONFIG"); T="$T-$(basename "$EVAL_CONFIG" .yaml)"
fi
AEMG_METHODS=aemg_finetune,aemg_probe,aemg_scratch
BASELINE_METHODS=td_lda,cnn,transformer,simclr,mae
case "${PART:-}" in
  # eval_real.sh's test baselines trained train.base_steps: reused only by a run without EVAL_CONFIG
  "") METHODS=$AEMG_METHODS
      [ -f "$OUT/test/trials.jsonl" ] && [ -z "${EVAL_CONFIG:-}" ] || METHODS="$METHODS,$BASELINE_METHODS" ;;
  aemg) METHODS=$AEMG_METHODS; S="$S-aemg" ;;
  baselines) METHODS=$BASELINE_METHODS; S="$S-baselines" ;;
  *) echo "PART must be aemg or baselines, not $PART" >&2; exit 2 ;;
esac

pretrain() {  # name suffix, exclusion override; the recipe's development-subject exclusion is replaced by it
  [ -f "$ABL/$RECIPE-$1/export/model.safetensors" ] || $AEMG pretrain --config "$ABL/$RECIPE/config.yaml" --no-ray \
    data.tokens="$TOKENS" run.out="$ABL/$RECIPE-$1" data.exclude_subjects=[] "$2"
}
test_run() {  # out folder, then evaluation options: the test folds, seeds and windows every run of the recipe shares
  local out=$1; shift
  $AEMG evaluate --corpus "$OUT/corpus.zarr" --out "$out" --splits "$SPLITS" --role test --budgets 0,1,5,10,100 \
    --max-folds "$FOLDS" --seeds "$SEEDS" --quiet "${CONFIG[@]}" "$@" windows_tokens="$WINDOWS" train.probe_init=true
}
pretrain g0 "$($AEMG folds --corpus "$OUT/corpus.zarr" --groups 2 --group 0)" & first=$!
pretrain g1 "$($AEMG folds --corpus "$OUT/corpus.zarr" --groups 2 --group 1)" & second=$!
wait "$first"; wait "$second"  # each wait fails the script if its pretraining failed
test_run "$T$S" --checkpoint "$ABL/$RECIPE-g0" --checkpoint "$ABL/$RECIPE-g1" --methods "$METHODS"
# the same folds of each left-out dataset, AEMG pretrained without the whole dataset
if [ -n "${LODO:-}" ] && [ "${PART:-}" != baselines ]; then
  pretrain no-3dc "data.exclude_datasets=[3dc]" & first=$!
  pretrain no-coteallard "data.exclude_datasets=[coteallard]" & second=$!
  wait "$first"; wait "$second"
  for dataset in 3dc coteallard; do
    test_run "$T-lodo-$dataset$S" --checkpoint "$ABL/$RECIPE-no-$dataset" --datasets "$dataset" \
      --methods aemg_finetune,aemg_probe
  done
fi
TEST_RUNS=() LODO_RUNS=()  # every test folder of the recipe so far: seeds and parts pooled
for run in "$T" "$T"-{s[0-9]*,aemg,baselines} "$T"-lodo-*; do
  [ -f "$run/trials.jsonl" ] || continue
  case "$run" in
    *-lodo-*) dataset=${run##*-lodo-}; LODO_RUNS+=(--lodo "${dataset%%-*}=$run") ;;
    *) TEST_RUNS+=("$run") ;;
  esac
done
.venv/bin/python benchmarks/targets_table.py "${TEST_RUNS[@]}" "${LODO_RUNS[@]}" --details \
  --out "$T-targets.md"
if [ -f "$OUT/test/trials.jsonl" ] && [ -z "${PART:-}" ] && [ -z "${EVAL_CONFIG:-}" ]; then
  .venv/bin/python benchmarks/compare_runs.py "$T$S" "$OUT/test" --methods "$METHODS" \
    --out "$T-vs-selected$S.md"
fi
