#!/usr/bin/env bash
# Issue 20's GPU figures in one go, on a machine with one CUDA device; fits a 10-minute device budget:
#
#     bash bench/gpu.sh [DATA_DIR] [CORES]        # DATA_DIR holds MNIST/raw (default ../shared/data)
#
# 1. the paper's plan on one GPU (profiles/gpu, a dry run): its jobs, TFLOP and lockstep steps;
# 2. kernel ops and host time of a lockstep step (bench/bench_step.py, CPU, tiny widths; fused and on);
# 3. fig2 end to end on the GPU through profiles/gpu (20 seeds, 720 runs): wall time, and from its jobs'
#    logs the measured seconds per lockstep step and per teacher TFLOP;
# 4. GPU-vs-CPU agreement of a sample: seed 0's 36 fig2 runs distilled again on the CPU from the same
#    (GPU-trained) teachers, their accuracies against the GPU's;
# 5. the estimated wall time of the whole paper on this GPU from 1 and 3.
# Each step is bounded in time, so a slow step cannot eat the machine's whole lease.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=$(realpath "${1:-../shared/data}")
CORES=${2:-16}
WORK=$(mktemp -d /tmp/sublearn-gpu.XXXXXX)
python - <<'EOF2'
import torch
assert torch.cuda.is_available(), "CUDA is not usable here: these figures need a GPU"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
EOF2
step() {  # a step that fails or times out is reported, and the next one still runs
    timeout "$@" || echo "[gpu.sh] exit $? (124: timed out after $1 s): ${*:2}"
}
printf 'data_dir: "%s"\n' "$DATA" > "$WORK/data.yaml"

echo "== 1. the paper on one GPU: plan"
step 120 snakemake -n all --workflow-profile profiles/gpu --configfile "$WORK/data.yaml" > "$WORK/paper-plan.log" 2>&1
grep -E "^plan|^lockstep steps" "$WORK/paper-plan.log"

echo "== 2. a lockstep step (CPU, 1 thread, tiny widths)"
for mode in fused on; do step 120 python bench/bench_step.py --mode "$mode" | sed "s/^/[$mode] /"; done

echo "== 3. fig2 end to end on the GPU"
step 360 python bench/bench_figure.py fig2 --cores "$CORES" --data-dir "$DATA" --profile gpu --work "$WORK/fig2"

echo "== 4 and 5. GPU vs CPU on a sample; the paper's estimated time"
step 150 python - "$WORK" "$DATA" <<'EOF2'
import json, re, subprocess, sys, time
from pathlib import Path

import pandas as pd

work, data = Path(sys.argv[1]), sys.argv[2]
fig2 = work / "fig2"
log = (fig2 / "snakemake.log").read_text()
batch_s = sum(float(m) for f in (fig2 / "logs" / "batches").glob("*.log")
              for m in re.findall(r"\[time\] batch ([\d.]+) s", f.read_text()))
teacher_s = sum(float(m) for f in (fig2 / "logs" / "teachers").glob("*.log")
                for m in re.findall(r"\[time\] teachers ([\d.]+) s", f.read_text()))
steps = int(re.search(r"lockstep steps: (\d+)", log).group(1))
teacher_tflop = float(re.search(r"teachers to train in \d+ teacher jobs, ([\d.]+) TFLOP", log).group(1))
print(f"fig2 on the GPU: batch jobs {batch_s:.1f} s for {steps} lockstep steps ({batch_s / steps * 1e3:.1f} ms a "
      f"step, students and their finishing included); teacher jobs {teacher_s:.1f} s for {teacher_tflop:.1f} TFLOP")

# 4. seed 0's runs again on the CPU, from the same teachers
records = [json.loads(line) for sheet in (fig2 / "results" / "sheets").glob("[!t]*.jsonl")
           for line in sheet.read_text().splitlines()]
sample = [r for r in records if r["settings"]["seed"] == 0]
gpu_dirs = {r["id"]: r["run_dir"] for r in sample}
for r in sample:
    r["run_dir"] = str(work / "cpu" / r["id"])
(work / "cpu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sample))
started = time.time()
subprocess.run(["python", "-m", "sublearn.cli", "batch", "--sheet", str(work / "cpu.jsonl"), "--teacher-dir",
                str(fig2 / "results" / "teachers"), "--device", "cpu", "--threads", "16", "--data-dir", data,
                "--cache-dir", str(fig2 / "resources" / "cache"), "--cache-only"], check=True,
               stdout=subprocess.DEVNULL, cwd=fig2)
gpu = pd.concat([pd.read_csv(Path(fig2) / d / "runs.csv") for d in gpu_dirs.values()]).set_index("run_key")
cpu = pd.concat([pd.read_csv(work / "cpu" / k / "runs.csv") for k in gpu_dirs]).set_index("run_key")
diff = (gpu["student_final_acc"] - cpu.loc[gpu.index, "student_final_acc"]).abs()
print(f"GPU vs CPU, {len(diff)} runs of seed 0 (CPU {time.time() - started:.0f} s): student accuracy |GPU - CPU| "
      f"mean {diff.mean():.4f}, max {diff.max():.4f}; mean accuracy GPU {gpu['student_final_acc'].mean():.4f}, "
      f"CPU {cpu['student_final_acc'].mean():.4f} (the noise streams of the two devices differ: agreement is "
      "statistical, not bitwise)")

# 5. the paper: its lockstep steps at fig2's measured seconds a step, its teachers at fig2's teacher rate
plan = (work / "paper-plan.log").read_text()
paper_steps = int(re.search(r"lockstep steps: (\d+)", plan).group(1))
paper_teacher_tflop = float(re.search(r"teachers to train in \d+ teacher jobs, ([\d.]+) TFLOP", plan).group(1))
estimate = paper_steps * batch_s / steps + paper_teacher_tflop * teacher_s / teacher_tflop
print(f"the paper on this GPU, estimated: {paper_steps} lockstep steps x {batch_s / steps * 1e3:.1f} ms + "
      f"{paper_teacher_tflop:.0f} teacher TFLOP at fig2's rate = {estimate / 60:.1f} min (target <= 15 min)")
EOF2
echo "[gpu.sh] work folder: $WORK"
