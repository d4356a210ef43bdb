#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, all state under DIR, to try `launcher=slurm` and to test it.
#   sudo scripts/slurm_cluster.sh up DIR     start it (again: nothing to do); then: export SLURM_CONF=DIR/slurm.conf
#   sudo scripts/slurm_cluster.sh down DIR   cancel its jobs, stop its daemons (DIR stays)
# Needs root and Debian's packages (SLURM 22.05): slurmctld slurmd slurm-client munge slurmdbd mariadb-server.
# Its own munged, mariadbd (accounting: submitit reads job states with sacct), slurmdbd, slurmctld and slurmd
# run as root on free local ports; one node with this machine's CPUs and memory, no cgroups
# (proctrack/linuxproc, task/none). Requeued jobs start again after ~12 s (cred_expire=10; default 120 s).
set -euo pipefail

usage() { echo "usage: $0 up|down DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
dir=$(realpath -m "$2")
conf=$dir/slurm.conf
export SLURM_CONF=$conf

running() { [ -f "$dir/$1.pid" ] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }

wait_for() {  # wait_for WHAT COMMAND...: up to 2 minutes (a loaded machine)
    for _ in $(seq 1200); do "${@:2}" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "slurm_cluster: $1 did not come up (logs in $dir/log)" >&2
    exit 1
}

up() {
    [ "$(id -u)" -eq 0 ] || { echo "slurm_cluster: needs root" >&2; exit 1; }
    if running slurmctld && running slurmd && scontrol ping >/dev/null 2>&1; then
        echo "slurm_cluster: already up, SLURM_CONF=$conf"
        return
    fi
    down 2>/dev/null || true
    mkdir -p "$dir/log" "$dir/state" "$dir/spool"
    chmod 755 "$dir"  # munged wants its socket's directories searchable by all

    read -r db_port dbd_port ctld_port slurmd_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
    host=$(hostname -s)
    cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # the CPUs slurmd will see: nproc would print OMP_NUM_THREADS
    mem_mb=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10))

    [ -f "$dir/munge.key" ] || mungekey -c -k "$dir/munge.key"
    munged --key-file="$dir/munge.key" --socket="$dir/munge.socket" --pid-file="$dir/munged.pid" \
        --log-file="$dir/log/munged.log" --seed-file="$dir/munge.seed"

    if [ ! -d "$dir/db" ]; then
        mariadb-install-db --no-defaults --datadir="$dir/db" --user=root --skip-test-db \
            --auth-root-authentication-method=socket >"$dir/log/mariadb-install.log" 2>&1
    fi
    setsid mariadbd --no-defaults --datadir="$dir/db" --socket="$dir/db.socket" --port="$db_port" \
        --bind-address=127.0.0.1 --user=root --pid-file="$dir/mariadbd.pid" --log-error="$dir/log/mariadbd.log" \
        --innodb-buffer-pool-size=16M >/dev/null 2>&1 &
    wait_for mariadbd mariadb --no-defaults --socket="$dir/db.socket" -u root -e "select 1"
    mariadb --no-defaults --socket="$dir/db.socket" -u root -e \
        "CREATE USER IF NOT EXISTS slurm@'127.0.0.1' IDENTIFIED BY 'slurm'; GRANT ALL ON slurm_acct_db.* TO slurm@'127.0.0.1'"

    cat >"$dir/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$dir/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$dbd_port
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=$dir/slurmdbd.pid
LogFile=$dir/log/slurmdbd.log
EOF
    chmod 600 "$dir/slurmdbd.conf"  # slurmdbd refuses a readable one (it holds the password)

    cat >"$conf" <<EOF
ClusterName=reptile
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10,socket=$dir/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$dbd_port
AccountingStoragePass=$dir/munge.socket
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=sched_interval=2,bf_interval=2
JobRequeue=1
ReturnToService=2
MpiDefault=none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

    slurmdbd  # reads slurmdbd.conf next to $SLURM_CONF
    wait_for slurmdbd bash -c "exec 3<>/dev/tcp/127.0.0.1/$dbd_port"
    slurmctld -i
    wait_for slurmctld scontrol ping
    slurmd
    wait_for slurmd bash -c "sinfo -h -N -o %t | grep -qx idle"
    echo "slurm_cluster: up, SLURM_CONF=$conf"
}

down() {
    if [ -f "$conf" ] && running slurmctld; then
        scancel --full --user=root || true
        for _ in $(seq 300); do [ -z "$(squeue -h -o %i)" ] && break; sleep 0.1; done
    fi
    pids=()
    for daemon in slurmd slurmctld slurmdbd mariadbd munged; do
        running $daemon && pids+=("$(cat "$dir/$daemon.pid")")
        rm -f "$dir/$daemon.pid"
    done
    [ ${#pids[@]} -eq 0 ] && return
    kill "${pids[@]}" 2>/dev/null || true
    for pid in "${pids[@]}"; do
        for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    done
}

case $cmd in
    up) up ;;
    down) down ;;
    *) usage ;;
esac
