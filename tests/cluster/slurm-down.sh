#!/usr/bin/env bash
# Stops the single-node SLURM that tests/cluster/slurm-up.sh started, and only that: cancels its
# jobs, then stops slurmd, slurmctld, slurmdbd, mariadbd and munged (if slurm-up started it) by the
# pids in STATE_DIR/pids/, checking each pid is still that daemon. Then removes STATE_DIR.
#
#   tests/cluster/slurm-down.sh [--keep] STATE_DIR    # --keep: leave STATE_DIR (logs) in place
set -uo pipefail

keep=0
[ "${1:-}" = --keep ] && { keep=1; shift; }
STATE=${1:?usage: slurm-down.sh [--keep] STATE_DIR}
[ -f "$STATE/slurm.conf" ] || { echo "slurm-down: $STATE is not a slurm-up.sh state directory" >&2; exit 1; }
export SLURM_CONF=$STATE/slurm.conf PATH=/usr/sbin:/sbin:$PATH

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# jobs first (their slurmstepd processes belong to this instance), while slurmctld still answers
pid=$(cat "$STATE/pids/slurmctld.pid" 2>/dev/null)
if alive "$pid"; then
    timeout 10 scancel --full --quiet --user=root >/dev/null 2>&1 || true
    for _ in $(seq 50); do
        [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break
        sleep 0.2
    done
fi

stop() {  # stop NAME: the pid in pids/NAME.pid, if it is still a NAME process
    local name=$1 pid comm
    pid=$(cat "$STATE/pids/$name.pid" 2>/dev/null) || return 0
    alive "$pid" || { rm -f "$STATE/pids/$name.pid"; return 0; }
    comm=$(cat "/proc/$pid/comm" 2>/dev/null)
    [ "$comm" = "$name" ] || { echo "slurm-down: pid $pid is '$comm', not $name; left alone" >&2; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then echo "slurm-down: $name ($pid) ignored SIGTERM; SIGKILL" >&2; kill -KILL "$pid" 2>/dev/null; fi
    rm -f "$STATE/pids/$name.pid"
}

for name in slurmd slurmctld slurmdbd mariadbd munged; do stop "$name"; done
# the configless link slurmd made to its cached config in STATE_DIR
case "$(readlink /run/slurm/conf 2>/dev/null)" in "$STATE"/*) rm -f /run/slurm/conf ;; esac
[ $keep = 1 ] || rm -rf "$STATE"
exit 0
