#!/usr/bin/env bash
# A single-node SLURM on this machine (Debian, root, no systemd), for tests and local sweeps.
#   scripts/slurm_local.sh start   install if missing, configure, start, wait for a probe job
#   scripts/slurm_local.sh stop    cancel jobs, stop every daemon it started (by PID file)
#   scripts/slurm_local.sh status  exit 0 if the controller answers
# Accounting (MariaDB + slurmdbd) is on: submitit needs `sacct` to see cancelled or killed jobs.
# Tuning that matters (shared/FACTS.md): batch_sched_delay=0, KillWait=5, AuthInfo=cred_expire=10
# (a requeued job would otherwise wait 120 s). Adapted from the reference in shared/slurm/.
set -euo pipefail

TIMEOUT="${SLURM_START_TIMEOUT:-90}"
NODE=localhost
LOGDIR=/var/log/slurm
log() { printf '[slurm_local %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { log "ERROR: $*"; exit 1; }

wait_for() {  # wait_for <what> <command...>
    local what="$1" deadline=$((SECONDS + TIMEOUT)); shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${TIMEOUT}s waiting for $what (logs: $LOGDIR)"
        sleep 0.2
    done
}

pid_of() {  # pid_of <pidfile> <comm>: the PID, if it is a live process of that name
    local pid
    [[ -s "$1" ]] || return 1
    pid=$(tr -d ' \n' <"$1")
    [[ "$pid" =~ ^[0-9]+$ && "$(cat /proc/"$pid"/comm 2>/dev/null)" == "$2" ]] || return 1
    [[ "$(awk '{print $3}' /proc/"$pid"/stat 2>/dev/null)" != Z ]] || return 1
    echo "$pid"
}

install_packages() {
    local pkgs=(munge slurmctld slurmd slurm-client slurm-wlm-basic-plugins slurmdbd slurm-wlm-mysql-plugin mariadb-server)
    local missing=() p
    for p in "${pkgs[@]}"; do
        [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" == "install ok installed" ]] || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    log "installing ${missing[*]}"
    local policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then  # keep the packages from starting daemons themselves
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    ((policy)) && rm -f /usr/sbin/policy-rc.d
    return 0
}

write_config() {
    local hw cpus mem field
    hw=$(slurmd -C | head -n 1)
    declare -A v
    for field in CPUs Boards SocketsPerBoard CoresPerSocket ThreadsPerCore RealMemory; do
        v[$field]=$(sed -n "s/.* $field=\([0-9]*\).*/\1/p" <<<"$hw")
        [[ -n "${v[$field]}" ]] || die "cannot read $field from 'slurmd -C': $hw"
    done
    mem=$((v[RealMemory] * 95 / 100))  # under the detected memory, or slurmd drains the node
    install -d -m 0755 /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGDIR"
    cat >/etc/slurm/slurm.conf <<CONF
# single-node SLURM written by scripts/slurm_local.sh
ClusterName=localcluster
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
KillWait=5
AuthInfo=cred_expire=10
ReturnToService=2
MailProg=/bin/true
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=${v[CPUs]} Boards=${v[Boards]} SocketsPerBoard=${v[SocketsPerBoard]} CoresPerSocket=${v[CoresPerSocket]} ThreadsPerCore=${v[ThreadsPerCore]} RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    cat >/etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
LogFile=$LOGDIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
CONF
    chmod 0600 /etc/slurm/slurmdbd.conf
}

start_daemons() {
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
    install -d -o munge -g munge -m 0711 /var/lib/munge
    [[ -s /etc/munge/munge.key ]] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    if ! pid_of /run/munge/munged.pid munged >/dev/null; then
        runuser -u munge -- /usr/sbin/munged --force
        wait_for munged bash -c 'munge -n | unmunge'
    fi

    install -d -o mysql -g mysql -m 0755 /run/mysqld
    [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    if ! pid_of /run/mysqld/mysqld.pid mariadbd >/dev/null; then
        setsid nohup /usr/sbin/mariadbd --user=mysql --skip-networking --pid-file=/run/mysqld/mysqld.pid \
            --log-error="$LOGDIR/mariadbd.log" --innodb-buffer-pool-size=128M </dev/null >/dev/null 2>&1 &
        wait_for mariadbd mariadb-admin ping
    fi
    if ! pid_of /run/slurmdbd.pid slurmdbd >/dev/null; then
        /usr/sbin/slurmdbd
        wait_for slurmdbd sacctmgr -n list cluster
    fi
    if pid_of /run/slurmctld.pid slurmctld >/dev/null; then
        scontrol reconfigure || true
    else
        /usr/sbin/slurmctld
        wait_for slurmctld bash -c 'scontrol ping | grep -q "is UP"'
    fi
    pid_of /run/slurmd.pid slurmd >/dev/null || /usr/sbin/slurmd -N "$NODE"
    wait_for slurmd pid_of /run/slurmd.pid slurmd
}

wait_until_usable() {
    local deadline=$((SECONDS + TIMEOUT)) state probe st
    until [[ "$(sinfo -h -n "$NODE" -o %T 2>/dev/null)" =~ ^(idle|mixed|allocated|completing)$ ]]; do
        state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
        [[ "$state" =~ down|drain|fail ]] && scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true
        ((SECONDS < deadline)) || die "node $NODE not usable (state: ${state:-?})"
        sleep 0.2
    done
    wait_for "cluster registration" bash -c "sacctmgr -n -P list cluster format=cluster | grep -qx localcluster"
    # The controller starts batch jobs from its first scheduling pass: wait for one probe job.
    probe=$(sbatch --parsable --job-name=slurm-local-probe --output=/dev/null --wrap=true)
    deadline=$((SECONDS + TIMEOUT))
    while :; do
        st=$(scontrol -o show job "$probe" 2>/dev/null || true); st=${st#*JobState=}; st=${st%% *}
        [[ "$st" == COMPLETED ]] && break
        [[ "$st" =~ ^(PENDING|CONFIGURING|RUNNING|COMPLETING|)$ ]] || die "probe job $probe ended $st"
        ((SECONDS < deadline)) || die "probe job $probe not done (state: ${st:-?})"
        sleep 0.2
    done
}

stop_one() {  # stop_one <comm> <pidfile>
    local pid
    pid=$(pid_of "$2" "$1") || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 75); do
        [[ -e /proc/$pid && "$(awk '{print $3}' /proc/"$pid"/stat 2>/dev/null)" != Z ]] || { rm -f "$2"; log "$1 stopped"; return 0; }
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$2"
}

case "${1:-}" in
    start)
        t0=$SECONDS
        install_packages
        write_config
        start_daemons
        wait_until_usable
        log "SLURM is up ($((SECONDS - t0)) s)"
        sinfo
        ;;
    stop)
        if pid_of /run/slurmctld.pid slurmctld >/dev/null && scontrol ping 2>/dev/null | grep -q "is UP"; then
            jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
            if [[ -n "${jobs// /}" ]]; then
                # shellcheck disable=SC2086
                scancel $jobs 2>/dev/null || true
                for _ in $(seq 1 100); do [[ -z "$(squeue -h 2>/dev/null)" ]] && break; sleep 0.2; done
            fi
        fi
        stop_one slurmd /run/slurmd.pid
        stop_one slurmctld /run/slurmctld.pid
        stop_one slurmdbd /run/slurmdbd.pid
        stop_one mariadbd /run/mysqld/mysqld.pid
        stop_one munged /run/munge/munged.pid
        ;;
    status)
        scontrol ping 2>/dev/null | grep -q "is UP"
        ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
