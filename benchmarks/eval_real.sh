#!/usr/bin/env bash
# LOSO on the six shared datasets (leave-one-day-out for the single-subject MultiDay), every method, budgets
# 0/1/5/10/100 %. AEMG is pretrained on all six datasets twice, each run without one half of every dataset's
# subjects (`aemg folds`), so each fold is scored by a model that never saw its held-out subject; and twice
# leave-one-dataset-out (without 3dc, without coteallard) for unseen devices.
# Usage: bash benchmarks/eval_real.sh [DATA] [OUT]   (defaults ../shared/data, benchmarks/out/eval_real)
set -euo pipefail
cd "$(dirname "$0")/.."
# one intra-op thread per process: pretraining and the fold tasks share 2 cores (10-20x slower otherwise)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DATA=${1:-../shared/data}
OUT=${2:-benchmarks/out/eval_real}
AEMG=.venv/bin/aemg
STEPS=${STEPS:-1000}
FOLDS=${FOLDS:-5}
[ -f "$OUT/corpus.zarr/manifest.json" ] || $AEMG prepare --source "$DATA" --out "$OUT/corpus.zarr" --quiet
[ -f "$OUT/tokens/tokens.json" ] || $AEMG tokenize --corpus "$OUT/corpus.zarr" --out "$OUT/tokens" --quiet
pretrain() {  # run name, exclusion override
  [ -f "$OUT/$1/export/model.safetensors" ] || $AEMG pretrain --config configs/pretrain/tiny.yaml --no-ray \
    data.tokens="$OUT/tokens" run.out="$OUT/$1" optim.max_steps="$STEPS" run.val_every=250 "$2"
}
pretrain pt-g0 "$($AEMG folds --corpus "$OUT/corpus.zarr" --groups 2 --group 0)"
pretrain pt-g1 "$($AEMG folds --corpus "$OUT/corpus.zarr" --groups 2 --group 1)"
pretrain pt-no-3dc "data.exclude_datasets=[3dc]"
pretrain pt-no-coteallard "data.exclude_datasets=[coteallard]"
$AEMG evaluate --checkpoint "$OUT/pt-g0" --checkpoint "$OUT/pt-g1" --corpus "$OUT/corpus.zarr" --out "$OUT/loso" \
  --max-folds "$FOLDS" --budgets 0,1,5,10,100 --seeds 0 --quiet
for dataset in 3dc coteallard; do  # the same folds and labeled windows, AEMG pretrained without the dataset
  $AEMG evaluate --checkpoint "$OUT/pt-no-$dataset" --corpus "$OUT/corpus.zarr" --out "$OUT/lodo-$dataset" \
    --datasets "$dataset" --methods aemg_finetune,aemg_probe --max-folds "$FOLDS" --budgets 0,1,5,10,100 --seeds 0 \
    --quiet windows_tokens="$OUT/loso/windows"
done
