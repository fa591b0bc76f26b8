#!/usr/bin/env bash
# Does pretraining help at low calibration budgets? LOSO on the demo-scale synthetic corpus (every subject of
# three simulated devices), AEMG pretrained without the held-out subjects (two pretrainings, each leaving out
# half of the subjects: `aemg folds`), against the same architecture from scratch and every baseline.
# Usage: bash benchmarks/eval_synthetic.sh [OUT]   (default benchmarks/out/eval_synthetic; ~30 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
# one intra-op thread per process: pretraining and the fold tasks share 2 cores (10-20x slower otherwise)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=${1:-benchmarks/out/eval_synthetic}
AEMG=.venv/bin/aemg
STEPS=${STEPS:-1500}
DATASETS=synth_myo,synth_3dc,synth_bipolar4
[ -f "$OUT/corpus.zarr/manifest.json" ] || $AEMG prepare --source synthetic --scale demo --out "$OUT/corpus.zarr" --quiet
# event tokens without the window-summary group, as when RESULTS' synthetic table was measured (today's default adds it)
[ -f "$OUT/tokens/tokens.json" ] || $AEMG tokenize --corpus "$OUT/corpus.zarr" --out "$OUT/tokens" --quiet \
  tokens.window_summary=false
for group in 0 1; do
  [ -f "$OUT/pt-g$group/export/model.safetensors" ] || $AEMG pretrain --config configs/pretrain/tiny.yaml --no-ray \
    data.tokens="$OUT/tokens" run.out="$OUT/pt-g$group" optim.max_steps="$STEPS" run.val_every=500 \
    "$($AEMG folds --corpus "$OUT/corpus.zarr" --groups 2 --group $group)"
done
$AEMG evaluate --checkpoint "$OUT/pt-g0" --checkpoint "$OUT/pt-g1" --corpus "$OUT/corpus.zarr" --out "$OUT/results" \
  --datasets "$DATASETS" --budgets 0,10,100 --seeds 0 --quiet
