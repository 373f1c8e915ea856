#!/usr/bin/env bash
# A real single-node SLURM on 127.0.0.1, for the cluster tests (tests/cluster/test_cluster.py) and
# for trying profiles/slurm by hand. Needs root and apt (Debian/Ubuntu packages).
#
#   tests/cluster/slurm-up.sh [STATE_DIR]   # prints STATE_DIR; `source STATE_DIR/env.sh` sets SLURM_CONF
#   tests/cluster/slurm-down.sh STATE_DIR   # stops exactly the daemons started here, removes STATE_DIR
#
# What it does:
#   1. installs slurm-wlm, slurmdbd, munge and mariadb-server with apt (skipped when present);
#   2. writes slurm.conf, gres.conf, slurmdbd.conf and a MariaDB data folder under STATE_DIR
#      (default: a new temporary directory): one node (this host, NodeAddr=127.0.0.1) with all its
#      CPUs, 80% of its memory and CCT_SLURM_GPUS (default 2) fake GPUs (File=/dev/null: jobs asking
#      for `--gpus=1` are scheduled and see CUDA_VISIBLE_DEVICES=0; the code finds no CUDA device and
#      runs on the CPU), one partition CCT_SLURM_PARTITION (default `cct`), accounting on through
#      slurmdbd + MariaDB (the Snakemake slurm plugin polls job states with `sacct`; without
#      accounting it never sees a job finish and waits forever), an account `local` for root;
#   3. starts munged (unless one already answers), mariadbd, slurmdbd, slurmctld and slurmd in the
#      background, each with a pid file in STATE_DIR/pids/ (slurm-down.sh stops exactly those);
#   4. waits until a job runs (`srun true`) and `sacct` answers.
# The machine may lack systemd and cgroups: proctrack/linuxproc and task/none need neither.
# Ports are free ones picked at start, so a second instance or a real slurmctld does not clash.
set -euo pipefail

PARTITION=${CCT_SLURM_PARTITION:-cct}
GPUS=${CCT_SLURM_GPUS:-2}
ACCOUNT=${CCT_SLURM_ACCOUNT:-local}

die() { echo "slurm-up: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (apt-get install, daemons running as root)"

# --- 1. packages -------------------------------------------------------------------------------
need=()
for pair in slurmctld:slurm-wlm slurmd:slurm-wlm slurmdbd:slurmdbd munged:munge mariadbd:mariadb-server; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "apt-get not found; install ${need[*]} yourself"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d 101: packages must not start (or fail to start) daemons here
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && created_policy=1
    fi
    pkgs=$(printf '%s\n' "${need[@]}" | sort -u | tr '\n' ' ')
    echo "slurm-up: apt-get install $pkgs" >&2
    apt-get install -y -q --no-install-recommends $pkgs >&2 \
        || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends $pkgs >&2; } \
        || { [ $created_policy = 1 ] && rm -f /usr/sbin/policy-rc.d; die "apt-get install $pkgs failed"; }
    [ $created_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
export PATH=/usr/sbin:/sbin:$PATH

# --- 2. configuration --------------------------------------------------------------------------
STATE=${1:-$(mktemp -d -t cct-slurm.XXXXXX)}
mkdir -p "$STATE"/{pids,log,spool/ctld,spool/d,mysql,run}
[ -e "$STATE/slurm.conf" ] && die "$STATE already holds a SLURM state; run slurm-down.sh $STATE first"
STATE=$(cd "$STATE" && pwd)
chmod 755 "$STATE"
HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
read -r CTLD_PORT SLURMD_PORT DBD_PORT SQL_PORT < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)

cat > "$STATE/slurm.conf" <<EOF
# written by tests/cluster/slurm-up.sh: one node on 127.0.0.1, for tests
ClusterName=cct
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/pids/slurmctld.pid
SlurmdPidFile=$STATE/pids/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no systemd, no usable cgroups in a container
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
MinJobAge=600
# a job that names no memory gets 1 GB per CPU, not the whole node
DefMemPerCPU=1024
KillWait=30
SchedulerType=sched/backfill
# configless: slurmd fetches this file from slurmctld and links it at /run/slurm/conf, where srun
# inside a job finds it (the Snakemake slurm jobstep drops SLURM_CONF from the job's environment)
SlurmctldParameters=enable_configless
# accounting: sacct is how the Snakemake slurm plugin sees jobs finish
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStorageTRES=gres/gpu
AccountingStorageEnforce=associations
# sacct shows the plugin's job comment (rule_<rule>_wildcards_<...>): which job ran which rule
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM Gres=gpu:$GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

# fake GPUs: each needs a File= (without one the node is INVAL), and the names must differ
# (slurmd refuses a duplicate): links to /dev/null
mkdir -p "$STATE/dev"
{
    echo "AutoDetect=off"
    for i in $(seq 0 $((GPUS - 1))); do
        ln -sfn /dev/null "$STATE/dev/fakegpu$i"
        echo "NodeName=$HOST Name=gpu File=$STATE/dev/fakegpu$i"
    done
} > "$STATE/gres.conf"

SQL_PASS=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
cat > "$STATE/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$STATE/pids/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$SQL_PORT
StorageUser=slurm
StoragePass=$SQL_PASS
StorageLoc=slurm_acct_db
EOF
chmod 600 "$STATE/slurmdbd.conf"

cat > "$STATE/env.sh" <<EOF
export SLURM_CONF=$STATE/slurm.conf
export PATH=/usr/sbin:/sbin:\$PATH
EOF
export SLURM_CONF=$STATE/slurm.conf

# --- 3. daemons ----------------------------------------------------------------------------------
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local t=$1 what=$2; shift 2
    for _ in $(seq $((t * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "slurm-up: timed out waiting for $what; logs in $STATE/log" >&2
    tail -n 20 "$STATE"/log/*.log >&2 || true
    return 1
}
fail() {
    trap - ERR
    echo "slurm-up: $*; stopping what was started (logs kept in $STATE/log)" >&2
    "$(dirname "$0")/slurm-down.sh" --keep "$STATE" >&2 || true
    exit 1
}
trap 'fail "line $LINENO failed"' ERR

# munged: the system one (key /etc/munge/munge.key) if it answers, else started here
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    echo "slurm-up: using the running munged" >&2
else
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    [ -s /etc/munge/munge.key ] || { mungekey --create >/dev/null 2>&1 || /usr/sbin/create-munge-key -f; chown munge:munge /etc/munge/munge.key; }
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid
    wait_for 10 munged sh -c 'munge -n | unmunge' || fail "munged did not answer"
    cp /run/munge/munged.pid "$STATE/pids/munged.pid"
fi

# MariaDB: its own data folder, socket and port, bound to 127.0.0.1
mysql_install_db --no-defaults --user=root --datadir="$STATE/mysql" --auth-root-authentication-method=socket \
    > "$STATE/log/mysql_install_db.log" 2>&1 || fail "mysql_install_db failed (see $STATE/log/mysql_install_db.log)"
SQL_SOCK=$STATE/run/mysqld.sock
mariadbd --no-defaults --user=root --datadir="$STATE/mysql" --socket="$SQL_SOCK" --port="$SQL_PORT" \
    --bind-address=127.0.0.1 --pid-file="$STATE/pids/mariadbd.pid" --log-error="$STATE/log/mariadbd.log" \
    --innodb-buffer-pool-size=64M --skip-name-resolve >> "$STATE/log/mariadbd.out" 2>&1 &
echo $! > "$STATE/pids/mariadbd.pid"   # mariadbd does not fork; it rewrites the same pid
wait_for 60 MariaDB mariadb --no-defaults --socket="$SQL_SOCK" -u root -e "SELECT 1" || fail "MariaDB did not start"
mariadb --no-defaults --socket="$SQL_SOCK" -u root <<EOF 2>&1
CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$SQL_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF

slurmdbd                             # reads slurmdbd.conf beside $SLURM_CONF; forks, writes its pid file
wait_for 60 slurmdbd sacctmgr -i show cluster || fail "slurmdbd did not answer"
sacctmgr -i add cluster cct >/dev/null 2>&1 || true
sacctmgr -i add account "$ACCOUNT" Description=tests Organization=tests >/dev/null
sacctmgr -i add user root account="$ACCOUNT" DefaultAccount="$ACCOUNT" >/dev/null

slurmctld -f "$STATE/slurm.conf"     # forks; writes its pid file
wait_for 30 slurmctld scontrol ping || fail "slurmctld did not answer"
# a dangling /run/slurm/conf left by an earlier instance would stop slurmd from linking its own
[ -L /run/slurm/conf ] && [ ! -e /run/slurm/conf ] && rm -f /run/slurm/conf
if [ -e /run/slurm/conf ]; then fail "/run/slurm/conf exists: another configless slurmd runs on this machine"; fi
slurmd --conf-server "127.0.0.1:$CTLD_PORT"
wait_for 30 "node $HOST idle" sh -c "sinfo -h -N -o %T | grep -qx idle" || {
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    wait_for 10 "node $HOST idle" sh -c "sinfo -h -N -o %T | grep -qx idle"
} || fail "node $HOST did not become idle ($(sinfo -h -N -o '%T %E'))"

# --- 4. a job runs and shows up in sacct -------------------------------------------------------
timeout 60 srun -A "$ACCOUNT" -p "$PARTITION" -t 1 --gpus=1 true >/dev/null 2>&1 || fail "srun --gpus=1 true failed"
wait_for 30 "sacct" sh -c "sacct -n -X -o State | grep -q COMPLETED" || fail "sacct does not record jobs"
echo "slurm-up: SLURM $(sinfo -V | cut -d' ' -f2) up on $HOST (partition $PARTITION, $GPUS fake GPUs, account $ACCOUNT); state in $STATE" >&2
echo "$STATE"
