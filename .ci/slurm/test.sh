#!/usr/bin/env bash
# End-to-end test of the SLURM profiles on a real (throw-away, one-node) SLURM cluster.
#
#   .ci/slurm/test.sh                 needs root, Debian's slurm packages (installed if missing) and the
#                                     Python environment of the project with the `slurm` extra
#
# 1. starts the cluster of start-cluster.sh (stopped again on exit, whatever happens);
# 2. runs one figure of config/quick.yaml locally (profiles/default) as the reference;
# 3. runs the same figure through profiles/slurm-cpu (+ the CI overrides in .ci/slurm/profile), cancels
#    one running batch job with scancel, checks that a rerun plans exactly the missing runs, reruns,
#    and checks that the jobs went through sbatch and that the table equals the local one;
# 4. checks that switching back to profiles/default or the real slurm-cpu profile reruns nothing;
# 5. runs one batch of students through profiles/slurm-gpu on the node's fake GPU: with the profile's device
#    cuda the jobs must stop saying why CUDA is unusable; with device auto sbatch must ask for the GPU, the
#    run must fall back to CPU (runs.csv device == cpu) and give the same numbers.
# Environment: PYTHON (default python3), SLURM_TEST_FIGURE (default fig5), SLURM_TEST_KEEP=1 keeps the
# work folder, SLURM_CI_PORT (see start-cluster.sh).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-python3}
FIG=${SLURM_TEST_FIGURE:-fig5}
PRESET=config/quick.yaml
T_RUN=${SLURM_TEST_TIMEOUT:-420}   # bound on each Snakemake call (it ignores SIGTERM while jobs run)
WORK=$(mktemp -d /tmp/sublearn-slurm-test.XXXXXX)
CLUSTER=$WORK/cluster
T0=$(date +%s.%N)
passed=0
failed=0
bg=""

say() { printf '[slurm-test %5.1fs] %s\n' "$("$PY" -c "import sys,time; print(time.time()-float(sys.argv[1]))" "$T0")" "$*"; }
ok() { passed=$((passed + 1)); say "ok: $*"; }
fail() { failed=$((failed + 1)); say "FAILED: $*"; }
finish() {
    local rc=$?
    if [ -n "$bg" ] && kill -0 "$bg" 2>/dev/null; then        # a Snakemake we started, still running
        pkill -TERM -P "$bg" 2>/dev/null; kill -TERM "$bg" 2>/dev/null; sleep 3
        pkill -KILL -P "$bg" 2>/dev/null; kill -KILL "$bg" 2>/dev/null
    fi
    "$REPO/.ci/slurm/stop-cluster.sh" "$CLUSTER" || true
    if [ "${SLURM_TEST_KEEP:-0}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
    say "done in $("$PY" -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):.0f}')" "$T0") s"
    if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
    echo "slurm: $passed passed, $failed failed"
    [ "$failed" = 0 ] || exit 1
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

if [ "$(id -u)" != 0 ]; then say "needs root to start a SLURM cluster"; exit 1; fi
"$PY" -c "import snakemake, snakemake_executor_plugin_slurm" 2>/dev/null \
    || { say "the slurm executor plugin is missing: pip install -e '.[slurm]'"; exit 1; }

# ------------------------------------------------------------------------------------ work trees
# Each run gets its own copy of the checkout (tracked and untracked, not ignored files): results,
# .snakemake and caches never mix and the user's own results/ are untouched. The quick preset reads
# MNIST from ../shared/data; without it, a synthetic MNIST stands in (the same for every run).
copy_tree() {
    mkdir -p "$1/repo"
    (cd "$REPO" && git ls-files -co --exclude-standard -z \
        | xargs -0 sh -c 'for f; do [ -f "$f" ] && printf "%s\0" "$f"; done' sh \
        | xargs -0 cp --parents -t "$1/repo")
    ln -s "$WORK/shared" "$1/shared"
}
if [ -d "$REPO/../shared/data/MNIST/raw" ]; then
    ln -s "$(cd "$REPO/../shared" && pwd)" "$WORK/shared"
else
    say "no ../shared/data: generating a synthetic MNIST"
    mkdir -p "$WORK/shared/data"
    PYTHONPATH="$REPO/src" "$PY" -c "from sublearn.idx import write_synthetic_dataset as w; \
w('$WORK/shared/data', 'mnist', n_train=6000, n_test=1000)"
fi
for v in local slurm gpu; do copy_tree "$WORK/$v"; done
# quick fig5 has 16 students: in batch jobs of 4, so that cancelling one leaves three to finish
BATCH4=$WORK/batch4.yaml
echo "batch: {max_runs: 4}" > "$BATCH4"

smk() {  # dir, logfile, snakemake args...: Snakemake bounded in time
    local dir=$1 log=$2; shift 2
    (cd "$dir" && timeout -k 15 "$T_RUN" "$PY" -m snakemake "$@" >"$log" 2>&1)
}
job_stats() {  # log -> "rule count" lines of the last job-stats table
    awk '/^Job stats:/ {n++; delete c} n && /^[a-z_0-9]+ +[0-9]+$/ {c[$1]=$2} END {for (r in c) print r, c[r]}' "$1"
}
count_runs() { find "$1/repo/results" -path '*/runs/*' -name runs.csv 2>/dev/null | wc -l; }

# ------------------------------------------------------------------------------------ cluster
t=$(date +%s.%N)
"$REPO/.ci/slurm/start-cluster.sh" "$CLUSTER" >/dev/null
source "$CLUSTER/env.sh"
say "cluster up in $("$PY" -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$t") s (incl. apt-get install when needed)"

# ------------------------------------------------------------------------------------ local reference
say "local reference: $FIG of $PRESET with profiles/default"
if smk "$WORK/local/repo" "$WORK/local.log" "$FIG" --configfile "$PRESET" "$BATCH4"; then
    ok "local run ($(count_runs "$WORK/local") student runs)"
else
    tail -30 "$WORK/local.log"; fail "local run"; exit 1
fi
TOTAL=$(count_runs "$WORK/local")

# ------------------------------------------------------------------------------------ SLURM, CPU
S=$WORK/slurm/repo
SLURM_CPU=(--workflow-profile none --profile profiles/slurm-cpu --profile .ci/slurm/profile)
say "SLURM run of $FIG through profiles/slurm-cpu; one batch job of students will be cancelled"
(cd "$S" && exec timeout -k 15 "$T_RUN" "$PY" -m snakemake "$FIG" "${SLURM_CPU[@]}" --configfile "$PRESET" "$BATCH4") \
    >"$WORK/slurm1.log" 2>&1 &
bg=$!
victim=""
for _ in $(seq 600); do
    kill -0 "$bg" 2>/dev/null || break
    # a batch job that has been running for 3 s: some of its students may be done, one is running
    victim=$(squeue -h -t RUNNING -o '%i %k %M' | awk '$2 ~ /batch_/ && $3 !~ /^0:0[0-2]$/ {print $1; exit}')
    [ -n "$victim" ] && break
    sleep 0.5
done
if [ -n "$victim" ]; then
    scancel "$victim"
    say "scancel $victim (a running batch job of students)"
else
    fail "no running batch job to cancel"
fi
rc1=0; wait "$bg" || rc1=$?; bg=""
present=$(count_runs "$WORK/slurm")
missing=$((TOTAL - present))
vstate=$( [ -n "$victim" ] && squeue -h -t all -j "$victim" -o %T || true)
if [ "$rc1" != 0 ] && [ "$vstate" = CANCELLED ] && grep -q "Error in rule batch_" "$WORK/slurm1.log" \
        && [ "$missing" -gt 0 ] && [ "$missing" -lt "$TOTAL" ]; then
    ok "job $victim $vstate, Snakemake reported the batch failed and finished the other jobs (exit $rc1; $present of $TOTAL runs, $missing missing)"
else
    tail -40 "$WORK/slurm1.log"; fail "after scancel: job '$victim' '$vstate', exit $rc1, $present of $TOTAL runs present"
fi
smk "$S" "$WORK/slurm-dry.log" "$FIG" "${SLURM_CPU[@]}" --configfile "$PRESET" "$BATCH4" -n || true
planned=$(sed -n "s/^plan by figure: .*$FIG \([0-9]*\) to compute in .*/\1/p" "$WORK/slurm-dry.log" | head -1)
others=$(job_stats "$WORK/slurm-dry.log" | awk '$1 ~ /^teachers_/ || $1 ~ /^prepare/ {print}')
if [ "${planned:-0}" = "$missing" ] && [ -z "$others" ]; then
    ok "rerun plans exactly the $missing missing student runs (no teacher, no data job)"
else
    job_stats "$WORK/slurm-dry.log"; fail "rerun plans ${planned:-0} student runs for $missing missing"
fi
if smk "$S" "$WORK/slurm2.log" "$FIG" "${SLURM_CPU[@]}" --configfile "$PRESET" "$BATCH4"; then
    ok "rerun completed $(sed -n "s/^plan by figure: .*$FIG \([0-9]*\) to compute in .*/\1/p" "$WORK/slurm2.log" | head -1) student runs"
else
    tail -40 "$WORK/slurm2.log"; fail "rerun"
fi

# did the jobs really go through sbatch?
ids=$(cat "$WORK/slurm1.log" "$WORK/slurm2.log" | sed -n 's/.*submitted with SLURM jobid \([0-9]*\).*/\1/p' | sort -un)
nids=$(echo "$ids" | grep -c . || true)
logs=$(find "$S/.snakemake/slurm_logs" -name '[0-9]*.log' | wc -l)
done_in_slurm=$(squeue -h -t all -o '%i %T' | awk 'NR==FNR {want[$1]; next} ($1 in want) && $2 == "COMPLETED"' \
    <(echo "$ids") - | wc -l)
groups=$(find "$S/.snakemake/slurm_logs" -path '*rule_batch_*' -name '[0-9]*.log' | wc -l)
if [ "$nids" -gt 0 ] && [ "$logs" -ge "$nids" ] && [ "$done_in_slurm" -ge $((nids - 1)) ] && [ "$groups" -ge 2 ]; then
    ok "$nids sbatch jobs (ids $(echo $ids | tr ' ' ,)), $groups of them batch jobs; $done_in_slurm COMPLETED in squeue, logs in .snakemake/slurm_logs"
else
    fail "sbatch evidence: $nids job ids, $logs logs, $done_in_slurm completed, $groups batch jobs"
fi

compare() {  # a.csv b.csv [key columns]: numeric columns equal, ignoring ids, times and hosts
    "$PY" - "$@" <<'EOF'
import math, sys
import pandas as pd
a, b = pd.read_csv(sys.argv[1]), pd.read_csv(sys.argv[2])
keys = [k for k in ("figure", "panel", "point", "seed") if k in a.columns]
ignore = {"run_id", "timestamp", "hostname"}
cols = [c for c in a.columns if c not in ignore and "runtime" not in c and not c.endswith("_seconds")]
assert list(b.columns) == list(a.columns), "different columns"
assert len(a) == len(b) and len(a) > 0, f"{len(a)} vs {len(b)} rows"
if keys:
    a, b = a.sort_values(keys).reset_index(drop=True), b.sort_values(keys).reset_index(drop=True)
numeric = [c for c in cols if pd.api.types.is_numeric_dtype(a[c])]
bad = []
for c in cols:
    x, y = a[c], b[c]
    same = ((x == y) | (x.isna() & y.isna())).all()
    if not same:
        bad.append(c)
if bad:
    print("differ:", ", ".join(bad[:10]))
    sys.exit(1)
print(f"{len(a)} rows, {len(numeric)} numeric columns identical")
EOF
}
if out=$(compare "$WORK/local/repo/results/quick/tables/$FIG.csv" "$S/results/quick/tables/$FIG.csv"); then
    ok "tables/$FIG.csv through SLURM equals the local one: $out"
else
    fail "tables/$FIG.csv differs from the local run: $out"
fi
if [ -s "$S/results/quick/figures/$FIG.png" ]; then ok "figure $FIG.png made through SLURM"; else fail "no $FIG.png"; fi

# ------------------------------------------------------------------------------------ switching profiles
for prof in "default" "slurm-cpu"; do
    smk "$S" "$WORK/switch-$prof.log" "$FIG" --workflow-profile "profiles/$prof" --configfile "$PRESET" "$BATCH4" -n || true
    if grep -q "Nothing to be done" "$WORK/switch-$prof.log"; then
        ok "switching to profiles/$prof reruns nothing"
    else
        job_stats "$WORK/switch-$prof.log"; fail "profiles/$prof would rerun jobs"
    fi
done

# the GPU profile's resource requests and CUDA env invalidate nothing either
smk "$S" "$WORK/switch-slurm-gpu.log" "$FIG" --workflow-profile profiles/slurm-gpu --configfile "$PRESET" "$BATCH4" -n || true
if grep -q "Nothing to be done" "$WORK/switch-slurm-gpu.log"; then
    ok "switching to profiles/slurm-gpu (same device) reruns nothing"
else
    job_stats "$WORK/switch-slurm-gpu.log"; fail "profiles/slurm-gpu would rerun jobs"
fi

# ------------------------------------------------------------------------------------ SLURM, fake GPU
G=$WORK/gpu/repo
one=$(cd "$S" && find results -path '*/runs/*' -name runs.csv | sort | head -1)
say "GPU profile: $one through profiles/slurm-gpu on the fake GPU (a GRES without CUDA behind it)"
if smk "$G" "$WORK/gpu-nocuda.log" "$one" --workflow-profile none --profile profiles/slurm-gpu \
        --profile .ci/slurm/profile --configfile "$PRESET" "$BATCH4"; then
    fail "GPU-profile run without usable CUDA completed (it must stop)"
elif why=$(grep -rh "CUDA is not usable here" "$G/logs" | head -1) && [ -n "$why" ]; then
    ok "device cuda without usable CUDA stops with the reason: ${why:0:160}"
else
    tail -40 "$WORK/gpu-nocuda.log"; fail "GPU-profile run failed without saying that CUDA is unusable"
fi
[ ! -e "$G/$one" ] || fail "a run was written by the GPU profile without CUDA"
# device auto (asked for explicitly) falls back to the CPU and records it
if smk "$G" "$WORK/gpu.log" "$one" --workflow-profile none --profile profiles/slurm-gpu --profile .ci/slurm/profile \
        --configfile "$PRESET" "$BATCH4" --config torch_env=gpu device=auto; then
    ok "GPU-profile run with device auto completed"
else
    tail -40 "$WORK/gpu.log"; fail "GPU-profile run with device auto"
fi
tjob=$(sed -n 's/.*submitted with SLURM jobid \([0-9]*\) (log: .*rule_teachers_.*/\1/p' "$WORK/gpu.log" | head -1)
sjob=$(sed -n 's/.*submitted with SLURM jobid \([0-9]*\) (log: .*rule_batch_.*/\1/p' "$WORK/gpu.log" | head -1)
tres_t=$( [ -n "$tjob" ] && scontrol show job "$tjob" | grep -o 'TresPerJob=[^ ]*' || true)
tres_s=$( [ -n "$sjob" ] && scontrol show job "$sjob" | grep -o 'TresPerJob=[^ ]*' || true)
if [[ "$tres_t" == *gpu:1* ]] && [[ "$tres_s" == *gpu:1* ]]; then
    ok "sbatch asked for the GPU: teacher job $tjob $tres_t, batch job $sjob $tres_s (both --gpus=1)"
else
    fail "GPU requests not seen by SLURM: teacher '$tjob' '$tres_t', batch '$sjob' '$tres_s'"
fi
if out=$("$PY" - "$G/$one" <<'EOF'
import sys
import pandas as pd
row = pd.read_csv(sys.argv[1]).iloc[0]
assert row["device"] == "cpu" and row["teacher_device"] == "cpu", (row["device"], row["teacher_device"])
assert int(row["cuda_available"]) == 0
print(f"device={row['device']} teacher_device={row['teacher_device']} cuda_available={row['cuda_available']}")
EOF
); then
    ok "no CUDA on the node: the run fell back to CPU and recorded it ($out)"
else
    fail "device columns: $out"
fi
if out=$(compare "$S/$one" "$G/$one"); then
    ok "the GPU-profile run equals the CPU-profile run: $out"
else
    fail "the GPU-profile run differs: $out"
fi
