#!/usr/bin/env bash
# Stop the cluster started by .ci/slurm/start-cluster.sh DIR: cancel its jobs, then stop slurmd,
# slurmctld and (only if start-cluster.sh started it) munged, each by the pid file written under DIR.
#
#   .ci/slurm/stop-cluster.sh [DIR]         DIR default: $SLURM_CI_DIR or /tmp/sublearn-slurm
#
# Safe to call twice and on a half-started cluster. Removes DIR only with SLURM_CI_KEEP=0.
set -uo pipefail

DIR=${1:-${SLURM_CI_DIR:-/tmp/sublearn-slurm}}
log() { printf '[stop-cluster] %s\n' "$*" >&2; }
[ -d "$DIR" ] || { log "no cluster folder $DIR"; exit 0; }
export SLURM_CONF=$DIR/slurm.conf

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pidfile() {  # pidfile name
    local pidfile=$1 name=$2 pid
    alive "$pidfile" || return 0
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || { log "$name ($pid) stopped"; return 0; }; sleep 0.1; done
    log "$name ($pid) ignored SIGTERM for 10 s; killing it"
    kill -KILL "$pid" 2>/dev/null
}

if alive "$DIR/slurmctld.pid" && [ -f "$SLURM_CONF" ]; then
    # running jobs would leave slurmstepd and its children behind once slurmd is gone
    if [ -n "$(squeue -h -t RUNNING,PENDING,COMPLETING,CONFIGURING -o %i 2>/dev/null)" ]; then
        log "cancelling remaining jobs"
        scancel --full -u "$(id -un)" 2>/dev/null || true
        for _ in $(seq 60); do
            [ -z "$(squeue -h -t RUNNING,PENDING,COMPLETING,CONFIGURING -o %i 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
fi
stop_pidfile "$DIR/slurmd.pid" slurmd
stop_pidfile "$DIR/slurmctld.pid" slurmctld
if [ -f "$DIR/munged.pid" ]; then
    stop_pidfile "$DIR/munged.pid" munged
    rm -f "$DIR/munged.pid"
fi
if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$DIR/slurm.conf" ]; then
    rm -f /etc/slurm/slurm.conf
fi
if [ "${SLURM_CI_KEEP:-1}" = 0 ]; then rm -rf "$DIR"; fi
exit 0
