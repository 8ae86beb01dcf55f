#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for the `slurm`-marked tests and for trying run.sh.
#
#   bash tools/slurm_cluster.sh start    # as root: install slurm-wlm + munge if missing, start munged,
#                                        # slurmctld and slurmd, wait until the node is idle
#   bash tools/slurm_cluster.sh status   # sinfo of the running cluster (exit 1 if slurmctld is down)
#   bash tools/slurm_cluster.sh stop     # stop slurmd, slurmctld and munged started by this script
#
# The node is this machine (its CPUs and real memory as `slurmd -C` reports them), in partition `debug`.
# Process tracking is proctrack/linuxproc with task/none, so no cgroups are needed (containers work).
# Jobs may share CPUs (OverSubscribe=FORCE:4): the cluster exists for tests, not for fair scheduling.
# State and logs live in $SLURM_CLUSTER_DIR (default /var/tmp/uniperceiver-slurm). The config is written
# to /etc/slurm/slurm.conf so that srun/sbatch find it without SLURM_CONF; a slurm.conf that this script
# did not write is never overwritten.
set -euo pipefail

DIR=${SLURM_CLUSTER_DIR:-/var/tmp/uniperceiver-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by uniperceiver tools/slurm_cluster.sh"
HOST=$(hostname -s)

log() { echo "[slurm_cluster] $*" >&2; }

need_root() {
    if [ "$(id -u)" != 0 ]; then
        log "must run as root (starts munged, slurmctld and slurmd)"; exit 1
    fi
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v srun >/dev/null; then
        return
    fi
    log "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends slurm-wlm slurm-client munge >/dev/null
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return
    fi
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating a munge key"
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge
    chmod 0400 /etc/munge/munge.key
    chmod 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do
        if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
        sleep 0.1
    done
    log "munged did not come up"; exit 1
}

write_conf() {
    if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        log "$CONF exists and was not written by this script; refusing to overwrite it"; exit 1
    fi
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" /etc/slurm
    # NodeName=... CPUs=... RealMemory=... exactly as slurmd detects this machine.
    local node
    node=$(slurmd -C | grep '^NodeName=')
    cat > "$CONF.tmp" <<EOF
$MARK
ClusterName=uniperceiver-ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it may start again (default 120).
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Look at pending jobs (e.g. requeued ones past their BeginTime) every 2 s, not every 30-60 s.
SchedulerParameters=bf_interval=2,sched_interval=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
# Reject jobs that can never run here (e.g. more CPUs per task than the node has) instead of queueing them.
EnforcePartLimits=ALL
JobRequeue=1
KillWait=10
MinJobAge=600
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
    mv "$CONF.tmp" "$CONF"
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_idle() {
    for _ in $(seq 120); do
        local state
        state=$(sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -n1 || true)
        case "$state" in
            idle|mixed|allocated) log "node $HOST is $state"; return 0 ;;
            *drain*|down*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    log "node $HOST did not become idle; see $DIR/log"; sinfo -N -l >&2 || true; return 1
}

start() {
    need_root
    install_packages
    start_munge
    write_conf
    if ! pid_alive "$DIR/slurmctld.pid"; then
        /usr/sbin/slurmctld -i
    fi
    if ! pid_alive "$DIR/slurmd.pid"; then
        /usr/sbin/slurmd
    fi
    wait_idle
}

status() {
    if ! pid_alive "$DIR/slurmctld.pid"; then
        log "slurmctld is not running"; return 1
    fi
    sinfo -N -l
}

stop_pidfile() {
    local pidfile=$1 name=$2
    if pid_alive "$pidfile"; then
        local pid
        pid=$(cat "$pidfile")
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
        log "$name ($pid) did not stop on SIGTERM"
    fi
}

stop() {
    need_root
    stop_pidfile "$DIR/slurmd.pid" slurmd
    stop_pidfile "$DIR/slurmctld.pid" slurmctld
    stop_pidfile /run/munge/munged.pid munged
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
