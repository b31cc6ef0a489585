#!/usr/bin/env bash
# Trains the project's default weights on a CPU, stage by stage, each stage resumable
# (re-running continues from RUNS/<model>/last.pt). x3, x4 and AS start from the x2
# body (as EDSR does for x3/x4). A finished stage's best weights go to model/weights/.
#
# Usage: scripts/train_defaults.sh [RUNS_DIR]
# Env:   STAGES="x2 x4 x3 as"  X2_ITERS=6000 X4_ITERS=3000 X3_ITERS=3000 AS_ITERS=3000
#        THREADS=2  DATA=../shared/data/train291  VAL_SET=../shared/data/benchmarks/Set5
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs}
data=${DATA:-../shared/data/train291}
val=${VAL_SET:-../shared/data/benchmarks/Set5}
common=(--data "$data" --val "$val" --threads "${THREADS:-2}" --schedule cosine --warmup 200 --val-every 500)

stage() {  # model, extra args...
  local name=$1; shift
  python -m model.train --model "$name" --out "$runs/$name" "${common[@]}" "$@"
  cp "$runs/$name/best.safetensors" "model/weights/imdn_$name.safetensors"
}

for name in ${STAGES:-x2 x4 x3 as}; do
  case $name in
    x2) stage x2 --scale 2 --patch 96 --batch 16 --lr 5e-4 --iters "${X2_ITERS:-6000}" ;;
    x4) stage x4 --scale 4 --patch 128 --batch 16 --lr 5e-4 --iters "${X4_ITERS:-3000}" --init "$runs/x2/best.safetensors" ;;
    x3) stage x3 --scale 3 --patch 120 --batch 16 --lr 5e-4 --iters "${X3_ITERS:-3000}" --init "$runs/x2/best.safetensors" ;;
    as) stage as --patch 96 --batch 16 --lr 5e-4 --iters "${AS_ITERS:-3000}" --init "$runs/x2/best.safetensors" ;;
    *) echo "unknown stage $name" >&2; exit 2 ;;
  esac
done
