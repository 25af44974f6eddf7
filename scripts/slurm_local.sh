#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, so examples/scripts/slurm_launch.sh can be run the way users run it.
#
#   scripts/slurm_local.sh up              # install slurm-wlm + munge if absent, write the config, start the daemons
#   export SLURM_CONF=$(scripts/slurm_local.sh conf)   # where sinfo/sbatch/scontrol find this cluster
#   sbatch --wait ...
#   scripts/slurm_local.sh down            # stop exactly the daemons `up` started, by their pid files
#
# `up` (root only: apt, and daemons running as root without systemd):
#   1. installs slurm-wlm and munge with apt if a binary is missing, without recommended packages, with a policy-rc.d
#      that forbids package scripts to start daemons (an existing policy-rc.d is put back afterwards);
#   2. writes a minimal slurm.conf into SLURM_LOCAL_DIR: one node named `hostname -s` with the CPU and memory figures
#      `slurmd -C` reports, one partition, no cgroups (proctrack/linuxproc, task/none), no accounting;
#   3. creates the munge key (munge:munge 0400) and munge's own directories (munge:munge 0700, socket directory 0755),
#      and starts munged as the munge user on its own socket, then slurmctld and slurmd;
#   4. waits (SLURM_UP_TIMEOUT seconds, default 120) until `sinfo` shows the node idle.
# Running daemons of this folder (live pid files) are left alone, so `up` twice is harmless.
#
# Knobs: SLURM_LOCAL_DIR (default ${TMPDIR:-/tmp}/openrlhf-darts-slurm), SLURMCTLD_PORT and SLURMD_PORT (default 16817,
# 16818: not Slurm's 6817/6818, so a real Slurm on the machine is never touched), SLURM_UP_TIMEOUT.
# The folder also holds the logs (log/) and stays after `down` for reading them.
#
# `down` cancels the jobs still queued or running on this cluster, then stops slurmd, slurmctld and munged: each only
# when its pid file names a live process with that daemon's name.
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/openrlhf-darts-slurm}
SLURMCTLD_PORT=${SLURMCTLD_PORT:-16817}
SLURMD_PORT=${SLURMD_PORT:-16818}
SLURM_UP_TIMEOUT=${SLURM_UP_TIMEOUT:-120}
export SLURM_CONF=${DIR}/slurm.conf
MUNGE_SOCKET=${DIR}/munge-run/munge.socket
NODE=$(hostname -s)

say() { echo "[slurm_local] $*" >&2; }
die() {
    say "$*"
    exit 1
}

# ---- install --------------------------------------------------------------------------------------------------------
install_packages() {
    local missing=0 binary
    for binary in slurmctld slurmd sinfo sbatch scontrol munged; do
        command -v "${binary}" >/dev/null || missing=1
    done
    [[ ${missing} == 0 ]] && return 0
    command -v apt-get >/dev/null || die "slurm-wlm/munge are not installed and apt-get is absent; install them by hand"
    say "installing slurm-wlm and munge (apt, no recommended packages, no daemon start)"
    local policy=/usr/sbin/policy-rc.d backup=""
    if [[ -e ${policy} ]]; then
        backup=$(mktemp)
        cp -p "${policy}" "${backup}"
    fi
    # shellcheck disable=SC2064  # expand now: the trap must restore exactly this state
    trap "restore_policy '${policy}' '${backup}'" EXIT
    printf '#!/bin/sh\n# slurm_local.sh: package scripts must not start daemons during this install\nexit 101\n' >"${policy}"
    chmod 0755 "${policy}"
    local apt=(apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends slurm-wlm munge)
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" >&2 || {
        apt-get -o DPkg::Lock::Timeout=300 update >&2
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" >&2
    }
    restore_policy "${policy}" "${backup}"
    trap - EXIT
}

restore_policy() {
    local policy=$1 backup=$2
    if [[ -n ${backup} ]]; then
        mv -f "${backup}" "${policy}"
    else
        rm -f "${policy}"
    fi
}

# ---- config ---------------------------------------------------------------------------------------------------------
write_config() {
    mkdir -p "${DIR}"/{state,spool,log,run}
    chmod 0755 "${DIR}"
    # `slurmd -C` prints "NodeName=<host> CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=.. ThreadsPerCore=..
    # RealMemory=..": keep every figure after the name.
    local hardware
    hardware=$(slurmd -C | awk 'NR == 1 { $1 = ""; print }')
    [[ ${hardware} == *CPUs=* && ${hardware} == *RealMemory=* ]] || die "unexpected \`slurmd -C\` output: ${hardware}"
    cat >"${SLURM_CONF}" <<EOF
# Written by scripts/slurm_local.sh: one node, no cgroups, no accounting.
ClusterName=darts-local
SlurmctldHost=${NODE}
SlurmctldPort=${SLURMCTLD_PORT}
SlurmdPort=${SLURMD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=${MUNGE_SOCKET}
CredType=cred/munge
StateSaveLocation=${DIR}/state
SlurmdSpoolDir=${DIR}/spool
SlurmctldPidFile=${DIR}/run/slurmctld.pid
SlurmdPidFile=${DIR}/run/slurmd.pid
SlurmctldLogFile=${DIR}/log/slurmctld.log
SlurmdLogFile=${DIR}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
NodeName=${NODE}${hardware} State=UNKNOWN
PartitionName=local Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
EOF
}

prepare_munge() {
    id munge >/dev/null 2>&1 || die "user munge does not exist; the munge package creates it (apt-get install munge)"
    runuser -u munge -- test -x "${DIR}" ||
        die "munged runs as user munge, which cannot enter ${DIR}; set SLURM_LOCAL_DIR to a folder whose parents" \
            "others may enter (the default is under /tmp)"
    mkdir -p "${DIR}/munge" "${DIR}/munge-run"
    # munged refuses a key or directories that others can write or read; the socket directory must be searchable.
    chown munge:munge "${DIR}/munge" "${DIR}/munge-run"
    chmod 0700 "${DIR}/munge"
    chmod 0755 "${DIR}/munge-run"
    if [[ ! -s ${DIR}/munge/munge.key ]]; then
        runuser -u munge -- mungekey --create --keyfile="${DIR}/munge/munge.key"
    fi
    chown munge:munge "${DIR}/munge/munge.key"
    chmod 0400 "${DIR}/munge/munge.key"
}

# ---- daemons --------------------------------------------------------------------------------------------------------
# alive NAME PIDFILE: the pid file names a live process whose name is NAME.
alive() {
    local name=$1 pidfile=$2 pid
    [[ -s ${pidfile} ]] || return 1
    pid=$(<"${pidfile}")
    [[ -r /proc/${pid}/comm && $(<"/proc/${pid}/comm") == "${name}" ]]
}

start_daemons() {
    if alive munged "${DIR}/run/munged.pid"; then
        say "munged already running (pid $(<"${DIR}/run/munged.pid"))"
    else
        runuser -u munge -- munged --key-file="${DIR}/munge/munge.key" --socket="${MUNGE_SOCKET}" \
            --pid-file="${DIR}/munge-run/munged.pid" --log-file="${DIR}/munge/munged.log" \
            --seed-file="${DIR}/munge/munged.seed"
        cp "${DIR}/munge-run/munged.pid" "${DIR}/run/munged.pid"
    fi
    munge --socket="${MUNGE_SOCKET}" -n | unmunge --socket="${MUNGE_SOCKET}" >/dev/null ||
        die "munge does not answer on ${MUNGE_SOCKET}; see ${DIR}/munge/munged.log"
    if alive slurmctld "${DIR}/run/slurmctld.pid"; then
        say "slurmctld already running (pid $(<"${DIR}/run/slurmctld.pid"))"
    else
        slurmctld || die "slurmctld did not start; see ${DIR}/log/slurmctld.log"
    fi
    if alive slurmd "${DIR}/run/slurmd.pid"; then
        say "slurmd already running (pid $(<"${DIR}/run/slurmd.pid"))"
    else
        slurmd || die "slurmd did not start; see ${DIR}/log/slurmd.log"
    fi
}

wait_idle() {
    local deadline=$((SECONDS + SLURM_UP_TIMEOUT)) state=""
    while ((SECONDS < deadline)); do
        state=$(sinfo -h -N -n "${NODE}" -o %T 2>/dev/null || true)
        if [[ ${state} == idle ]]; then
            say "node ${NODE} idle; SLURM_CONF=${SLURM_CONF}"
            return 0
        fi
        sleep 1
    done
    die "node ${NODE} is '${state}' after ${SLURM_UP_TIMEOUT} s (want idle); see ${DIR}/log/"
}

stop_daemon() {
    local name=$1 pidfile=$2 pid
    if ! alive "${name}" "${pidfile}"; then
        rm -f "${pidfile}"
        return 0
    fi
    pid=$(<"${pidfile}")
    kill -TERM "${pid}"
    for _ in $(seq 60); do
        [[ -d /proc/${pid} ]] || break
        sleep 0.5
    done
    if [[ -d /proc/${pid} ]]; then
        say "${name} (pid ${pid}) still running 30 s after SIGTERM; sending SIGKILL"
        kill -KILL "${pid}"
    fi
    rm -f "${pidfile}"
    say "stopped ${name} (pid ${pid})"
}

down() {
    if alive slurmctld "${DIR}/run/slurmctld.pid"; then
        local jobs
        jobs=$(squeue -h -o %i 2>/dev/null || true)
        if [[ -n ${jobs} ]]; then
            say "cancelling jobs left on the cluster: ${jobs//$'\n'/ }"
            # shellcheck disable=SC2086  # one id per word
            scancel ${jobs} || true
            for _ in $(seq 120); do
                [[ -z $(squeue -h -o %i 2>/dev/null || true) ]] && break
                sleep 0.5
            done
        fi
    fi
    stop_daemon slurmd "${DIR}/run/slurmd.pid"
    stop_daemon slurmctld "${DIR}/run/slurmctld.pid"
    stop_daemon munged "${DIR}/run/munged.pid"
}

case "${1:-}" in
    up)
        [[ ${EUID} == 0 ]] || die "run as root: apt and the Slurm daemons need it"
        install_packages
        write_config
        prepare_munge
        start_daemons
        wait_idle
        ;;
    down) down ;;
    conf) echo "${SLURM_CONF}" ;;
    *) die "usage: $0 up|down|conf" ;;
esac
