#!/usr/bin/env bash
# The real-data verdict under the strict protocol, on the six shared datasets. Every step skips what it finds
# finished, and every evaluation resumes from its trials.jsonl, so the script can be stopped and run again.
#
#  1. corpus, pretraining tokens (2 s chunks) and the labeled 0.5 s windows every evaluation shares;
#  2. choices on the development subjects (configs/splits/shared.yaml), never on the test subjects:
#     the sweep configs/sweep/real.yaml (codebook size x mask ratio x pretraining steps), then LP-FT on/off for the
#     configuration it selects (`benchmarks/compare_runs.py` prints the difference);
#  3. that configuration pretrained twice, each run without one half of every dataset's subjects (`aemg folds`), so
#     each fold is scored by a model that never saw its held-out subject, and twice leave-one-dataset-out;
#  4. the test subjects: every method, budgets 0/1/5/10/100 %, seeds 0,1,2, at most FOLDS (10) folds per dataset;
#     leave-one-dataset-out for 3dc and coteallard; and the same folds at seed 0 with transductive statistics
#     (the sensitivity of the numbers to the old protocol).
# Usage: bash benchmarks/eval_real.sh [DATA] [OUT]   (defaults ../shared/data, runs/eval_real)
# Environment: FOLDS (10), SEEDS (0,1,2), TRANSDUCTIVE_FOLDS (FOLDS) trade the run's length for its precision.
set -euo pipefail
cd "$(dirname "$0")/.."
# one intra-op thread per process: pretraining and the fold tasks share 2 cores (10-20x slower otherwise)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DATA=${1:-../shared/data}
OUT=${2:-runs/eval_real}
AEMG=.venv/bin/aemg
SPLITS=configs/splits/shared.yaml
FOLDS=${FOLDS:-10}
SEEDS=${SEEDS:-0,1,2}
TRANSDUCTIVE_FOLDS=${TRANSDUCTIVE_FOLDS:-$FOLDS}  # folds per dataset of the transductive sensitivity run
BUDGETS=0,1,5,10,100

# 1. data
bash benchmarks/real_inputs.sh "$DATA" "$OUT"
evaluate() {  # out folder, then aemg evaluate options; resumes a finished or interrupted run
  local out=$1; shift
  $AEMG evaluate --corpus "$OUT/corpus.zarr" --out "$out" --splits "$SPLITS" --budgets "$BUDGETS" --quiet \
    "$@" windows_tokens="$OUT/windows"
}

# 2. choices on the development subjects
SWEEP=runs/sweep-real
[ -d "$SWEEP/tune" ] && RESUME=--resume || RESUME=
[ -f "$SWEEP/selected.json" ] || $AEMG sweep --config configs/sweep/real.yaml --quiet $RESUME "evaluation.corpus=$OUT/corpus.zarr" \
  "evaluation.windows_tokens=$OUT/windows" "pretrain_overrides=[data.tokens=$OUT/tokens,run.checkpoint_every=500,run.val_every=500,dist.num_workers=1]" \
  "out=$SWEEP"
CHOSEN=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['selected'])" "$SWEEP/selected.json")
CHOSEN_RUN="$SWEEP/pretrain/$CHOSEN-g0"
echo "selected on the development subjects: $CHOSEN"
for probe_init in true false; do  # LP-FT (the head starts from the linear probe) or a random head
  evaluate "$OUT/dev-lpft-$probe_init" --checkpoint "$CHOSEN_RUN" --role development --methods aemg_finetune \
    --max-folds 2 --budgets 0,1,10,100 --seeds 0 "train.probe_init=$probe_init"
done
.venv/bin/python benchmarks/compare_runs.py "$OUT/dev-lpft-true" "$OUT/dev-lpft-false" --out "$OUT/dev-lpft.md"
LPFT=$(.venv/bin/python - "$OUT/dev-lpft-true" "$OUT/dev-lpft-false" <<'EOF'
import sys
sys.path.insert(0, "benchmarks")
from compare_runs import compare
rows = [r for r in compare(*map(__import__("pathlib").Path, sys.argv[1:3])) if r["dataset"] == "all"]
print("true" if sum(r["difference"] for r in rows) >= 0 else "false")  # keep LP-FT unless it loses on average
EOF
)
echo "LP-FT on the development subjects: probe_init=$LPFT"

# 3. the selected configuration, pretrained without each half of the subjects and without whole datasets
pretrain() {  # run name, exclusion override
  [ -f "$OUT/$1/export/model.safetensors" ] || $AEMG pretrain --config "$CHOSEN_RUN/config.yaml" \
    --no-ray data.tokens="$OUT/tokens" run.out="$OUT/$1" data.exclude_subjects=[] "$2"
}
pretrain pt-g0 "$($AEMG folds --corpus "$OUT/corpus.zarr" --groups 2 --group 0)"
pretrain pt-g1 "$($AEMG folds --corpus "$OUT/corpus.zarr" --groups 2 --group 1)"
pretrain pt-no-3dc "data.exclude_datasets=[3dc]"
pretrain pt-no-coteallard "data.exclude_datasets=[coteallard]"

# 4. the test subjects
evaluate "$OUT/test" --checkpoint "$OUT/pt-g0" --checkpoint "$OUT/pt-g1" --role test --max-folds "$FOLDS" \
  --seeds "$SEEDS" "train.probe_init=$LPFT"
for dataset in 3dc coteallard; do  # the same folds, AEMG pretrained without the dataset
  evaluate "$OUT/test-lodo-$dataset" --checkpoint "$OUT/pt-no-$dataset" --role test --datasets "$dataset" \
    --methods aemg_finetune,aemg_probe --max-folds "$FOLDS" --seeds "$SEEDS" "train.probe_init=$LPFT"
done
evaluate "$OUT/test-transductive" --checkpoint "$OUT/pt-g0" --checkpoint "$OUT/pt-g1" --role test \
  --max-folds "$TRANSDUCTIVE_FOLDS" --seeds 0 --normalization transductive "train.probe_init=$LPFT"
.venv/bin/python benchmarks/compare_runs.py "$OUT/test" "$OUT/test-transductive" --out "$OUT/strict-vs-transductive.md"
