#!/usr/bin/env bash
# IMDN_WORKERS on a GPU (issue 16), in at most 8 minutes: service throughput against the engine's at
# 1, 4 and 16 clients with 1 and 4 workers, and the memory (host RSS, GPU) each worker holds.
#
#   bash scripts/gpu_check.sh [OUT]        # OUT: the report file (default gpu_check.txt)
#
# The goal is a service that reaches >= 0.9 of the engine's throughput ("/engine" column); one
# process reached 0.5 on an H200. Each step is bounded so a hang cannot eat the lease; the budget:
# engine + 2 server start-ups (4 CUDA workers warm in parallel) + 2 x 3 levels x 15 s, well under 8 min.
set -u
out=${1:-gpu_check.txt}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
start=$(date +%s)
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'CPUs', __import__('os').cpu_count())"
    # 256x256 -> x2: small images, where per-request CPU work (decode, PNG, HTTP) matters most.
    timeout 300 python3 bench/service.py workers --workers 1 4 --clients 1 4 16 --duration 15 --side 256
    # 1024x1024 -> x2, 4 workers only: bigger images, where the GPU's share grows.
    timeout 150 python3 bench/service.py workers --workers 4 --clients 4 16 --duration 15 --side 1024
    echo "gpu_check: $(( $(date +%s) - start )) s"
} 2>&1 | tee "$out"
