#!/usr/bin/env bash
# Overhead of running N trivial jobs through SLURM, with and without grouping, against local runs.
#
#   .ci/slurm/bench-overhead.sh [N]            N default 8; prints one line per variant
#
# Starts (and stops) its own throw-away cluster like test.sh, unless SLURM_CONF already points at
# one. Each job is `true`, so the time is all overhead: sbatch, scheduling, the job's own Snakemake
# start, srun, and the executor's status polling (every 2 s here, via the CI profile overrides).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
N=${1:-8}
PY=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/sublearn-bench.XXXXXX)
CLUSTER=${SLURM_CI_DIR:-$WORK/cluster}
started=0
cleanup() {
    [ "$started" = 1 ] && "$REPO/.ci/slurm/stop-cluster.sh" "$CLUSTER" >/dev/null 2>&1
    rm -rf "$WORK"
}
trap cleanup EXIT
if [ -z "${SLURM_CONF:-}" ]; then
    started=1
    t0=$(date +%s.%N)
    "$REPO/.ci/slurm/start-cluster.sh" "$CLUSTER" >/dev/null
    source "$CLUSTER/env.sh"
    "$PY" -c "import sys, time; print(f'cluster start (incl. install if needed): {time.time() - float(sys.argv[1]):.1f} s')" "$t0"
fi

cat > "$WORK/Snakefile" <<'EOF'
rule all:
    input: expand("out/{i}.txt", i=range(int(config["n"])))
rule trivial:
    output: "out/{i}.txt"
    threads: 1
    resources: mem_mb=100, runtime=5
    shell: "true > {output}"
EOF

echo "n: $N" > "$WORK/n.yaml"
run() {  # name, extra snakemake args...
    local name=$1; shift
    rm -rf "$WORK/out" "$WORK/.snakemake"
    local t0 t1
    t0=$(date +%s.%N)
    (cd "$WORK" && timeout -k 10 600 "$PY" -m snakemake all --workflow-profile none \
        "$@" --configfile n.yaml >"$WORK/$name.log" 2>&1) || { echo "$name failed:"; tail -20 "$WORK/$name.log"; exit 1; }
    t1=$(date +%s.%N)
    local jobs
    jobs=$(grep -c "submitted with SLURM jobid" "$WORK/$name.log" || true)
    "$PY" -c "import sys; t=float(sys.argv[2])-float(sys.argv[1]); n=int(sys.argv[3]); \
print(f'{sys.argv[4]:<24} {n} jobs, {sys.argv[5]} sbatch: {t:6.1f} s total, {t/n:5.2f} s per job')" \
        "$t0" "$t1" "$N" "$name" "$jobs"
}

SLURM=(--executor slurm --jobs 100 --profile "$REPO/.ci/slurm/profile")
run local --cores 2
run slurm-ungrouped "${SLURM[@]}"
run slurm-grouped "${SLURM[@]}" --groups trivial=g --group-components g="$N"
