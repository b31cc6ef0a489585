#!/usr/bin/env bash
# One GPU lease, one command: fine-tune x2/x3/x4 and the camera-degradation IMDN_AS side by side for a
# fixed time, then the GPU benchmarks.
#
#   bash scripts/gpu_session.sh DATA OUT [TRAIN_SECONDS]
#
# TRAIN_SECONDS 0 runs the benchmarks alone. DATA holds train291/ (HR training images) and Set5/
# (validation); OUT receives runs.tar (best weights, CSV logs, curves, training logs) and bench.txt.
# (train291 went to the lease as lossless WebP, 40 MB instead of 59, to fit the 64 MiB transfer.)
# Each training run fits its cosine schedule to the time budget (--time-budget), so all three end,
# validated and saved, before the lease does.
set -u
data=$1 out=$2 budget=${3:-310}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/bench.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee -a "$out/bench.txt"

if [ "$budget" -gt 0 ]; then  # 0: benchmarks only
mkdir -p runs
for scale in 2 3 4; do
    timeout -s TERM $((budget + 30)) python3 -m model.train --scale $scale --data "$data/train291" \
        --val "$data/Set5" --out runs/x$scale --init model/weights/imdn_x$scale.safetensors \
        --patch 192 --batch 16 --lr 2e-4 --schedule cosine --warmup 100 --iters 1000000 \
        --time-budget "$budget" --val-every 500 --save-every 100 --threads 4 >runs/x$scale.log 2>&1 &
done
# IMDN_AS for real photos: synthetic camera degradation (model/degrade.py), monitored on real pairs if sent.
real_val=()
[ -d "$data/realsr-sample" ] && real_val=(--val-real "$data/realsr-sample")
timeout -s TERM $((budget + 30)) python3 -m model.train --model as --degradation camera --data "$data/train291" \
    --val "$data/Set5" "${real_val[@]}" --out runs/as --init model/weights/imdn_as.safetensors \
    --patch 192 --batch 16 --lr 1e-4 --schedule cosine --warmup 100 --iters 1000000 \
    --time-budget "$budget" --val-every 500 --save-every 100 --threads 4 >runs/as.log 2>&1 &
wait
tail -n 3 runs/x*.log runs/as.log
tar cf "$out/runs.tar" runs/*/best.safetensors runs/*/log.csv runs/*/curve.png runs/*.log
fi

# Benchmarks, each bounded so that one hang cannot eat the lease (the GPU figures in docs/performance.md).
{
    timeout 60 python3 bench/backends.py --device cuda --model x4 --size 256
    timeout 60 python3 bench/backends.py --device cuda --model x2 --size 1024 --rounds 10
    timeout 60 python3 bench/service.py ttfb --rounds 2
    timeout 120 python3 bench/service.py batching --duration 3
    timeout 60 python3 bench/service.py overhead --rounds 3
    timeout 90 python3 bench/service.py throughput --duration 8
} 2>&1 | tee -a "$out/bench.txt"
