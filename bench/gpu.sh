#!/usr/bin/env bash
# Issue 8's GPU figures in one go, on a machine with one CUDA device (about 10 minutes on an H200):
#
#     bash bench/gpu.sh [DATA_DIR] [CORES]        # DATA_DIR holds MNIST/raw (default ../shared/data)
#
# 1. batch vs per-run student jobs on the GPU (fig2's 36 runs of a seed), with and without stacked layers:
#    wall times, ratios, FLOP rate, and whether every run agrees with its lone twin (to float tolerance);
# 2. one batch job of fig2's runs of 5 seeds (180 runs, 5 teachers), stacked layers on vs off: what
#    lockstep across seeds with batched matmuls gives;
# 3. fig2's 20 teachers: per-teacher jobs against one teacher job, stacked layers off and on;
# 4. fig2 end to end through the workflow on the GPU (20 seeds, 720 runs): wall time and sustained rate
#    against the target (<= 2 minutes), with CORES concurrent jobs sharing the device.
# Each step is bounded in time, so a slow step cannot eat the machine's whole lease.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
CORES=${2:-16}
python - <<'EOF'
import torch
assert torch.cuda.is_available(), "CUDA is not usable here: these figures need a GPU"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
EOF
step() {  # a step that fails or times out is reported, and the next one still runs
    timeout "$@" || echo "[gpu.sh] exit $? (124: timed out after $1 s): ${*:2}"
}
step 240 python bench/bench_batch.py --data-dir "$DATA" --sample fig2 --device cuda --threads 1 --stack-layers both
step 150 python bench/bench_batch.py --data-dir "$DATA" --sample fig2 --seeds 5 --skip-per-run --device cuda \
    --threads 1 --stack-layers both
step 180 python bench/bench_teachers.py --data-dir "$DATA" --seeds 20 --device cuda --stack-layers off,on
step 420 python bench/bench_figure.py fig2 --cores "$CORES" --data-dir "$DATA" \
    --config device=cuda torch_env=gpu 'batch={gflops: 10000, max_tflop: 2000, max_runs: 400, teacher_max_tflop: 40}'
