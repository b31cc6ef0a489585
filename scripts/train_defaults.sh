#!/usr/bin/env bash
# Trains the project's default weights in stages on a CPU, each stage resumable:
# x2 first, then x4, x3 and AS starting from the x2 body (as EDSR does for x3/x4).
# Each finished stage's best weights are copied to model/weights/.
# Usage: scripts/train_defaults.sh [RUNS_DIR]   (env: THREADS, DATA, VAL_SET, STAGE_ITERS_SCALE)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs}
data=${DATA:-../shared/data/train291}
val=${VAL_SET:-../shared/data/benchmarks/Set5}
threads=${THREADS:-2}
common=(--data "$data" --val "$val" --threads "$threads" --schedule cosine --warmup 200 --val-every 500)

stage() {  # name, extra args...
  local name=$1; shift
  python -m model.train --model "$name" --out "$runs/$name" "${common[@]}" "$@"
  cp "$runs/$name/best.safetensors" "model/weights/imdn_$name.safetensors"
}

stage x2 --scale 2 --patch 96 --batch 16 --lr 5e-4 --iters "${X2_ITERS:-6000}"
stage x4 --scale 4 --patch 128 --batch 16 --lr 5e-4 --iters "${X4_ITERS:-3000}" --init "$runs/x2/best.safetensors"
stage x3 --scale 3 --patch 120 --batch 16 --lr 5e-4 --iters "${X3_ITERS:-3000}" --init "$runs/x2/best.safetensors"
stage as --patch 96 --batch 16 --lr 5e-4 --iters "${AS_ITERS:-3000}" --init "$runs/x2/best.safetensors"
