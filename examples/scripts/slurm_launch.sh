#!/usr/bin/env bash
# Run one training script (baseline, DARTS or tail batching) on a Ray cluster built inside a Slurm allocation.
#
#   sbatch --nodes=4 examples/scripts/slurm_launch.sh examples/scripts/train_qwen2.5_32b_multinode_darts.sh
#   sbatch --nodes=4 examples/scripts/slurm_launch.sh examples/scripts/train_qwen2.5_32b_multinode_baseline.sh
#   sbatch --nodes=1 examples/scripts/slurm_launch.sh examples/scripts/train_qwen2.5_math_7b_1node_darts.sh
#   CPU_MODE=1 sbatch --nodes=1 --gpus-per-node=0 examples/scripts/slurm_launch.sh examples/scripts/train_smoke_cpu_darts.sh
#   sbatch --nodes=1 examples/scripts/slurm_launch.sh examples/scripts/train_qwen2.5_math_7b_1node_tail_batching.sh
#
# Steps: the first node of the allocation starts the Ray head; once its dashboard answers, every other node joins it
# (one srun each); the script waits until EXPECTED_NODES Ray nodes are alive, then submits the training script as a
# Ray job from the head and streams its log. The job ships this repository as its working_dir, so `openrlhf_darts`,
# the reward function and the scripts reach every node; Ray puts the working_dir on the import path of every actor of
# the job. On exit, success or failure, the script stops the Ray processes it started on every node: SIGTERM to each
# node's `ray start --block` (by the pid it recorded, checked against its command line), which stops that node's Ray
# processes. Slurm's own clean-up is not enough: with proctrack/linuxproc it loses processes that re-parent.
#
# GPU mode (default): every node gives Ray all its GPUs (GPUS_PER_NODE, default 8, matching `#SBATCH --gpus-per-node`
# below); the `ray start` steps take --gpus-per-node=GPUS_PER_NODE.
# CPU mode (CPU_MODE=1): for nodes without GPU GRES (a CPU cluster, a laptop with Slurm; tests/slurm/ runs it on the
# one-node cluster of scripts/slurm_local.sh). Submit with `--gpus-per-node=0`: an `#SBATCH --gpus-per-node` line
# cannot be undone from inside the script, but sbatch command-line options beat `#SBATCH` lines. The srun steps then
# ask for no GPUs, and `ray start` gets logical labels, --num-gpus=GPUS_PER_NODE (default 4) and
# --num-cpus=RAY_NUM_CPUS (default GPUS_PER_NODE + 4; in GPU mode only when set): Ray resources are only labels, the processes share the node's
# cores. The local mode (train_smoke_cpu_*.sh, `openrlhf_darts.local.train`) needs 3 GPU and 5 CPU labels; inside the
# Ray job it attaches to this cluster instead of starting its own.
#
# Knobs (environment variables; sbatch hands the submitting shell's environment to the job):
#   PYTHON          the interpreter on every node: default REPO_ROOT/.venv/bin/python when it exists, else python3.
#                   It runs `ray start`, `ray job submit` and the job (forwarded as PYTHON). Its Ray must be 2.55.0,
#                   which OpenRLHF 0.11.2 pins: a node whose Ray differs installs 2.55.0 with pip, except into an
#                   externally managed system Python (PEP 668, e.g. Debian's python3), where it fails with the fix.
#   RAY_PORT (6379), DASHBOARD_PORT (8265), RAY_CLIENT_PORT (10001), DASHBOARD_AGENT_PORT (52365): Ray's fixed ports;
#                   RUNTIME_ENV_AGENT_PORT (52366): Ray picks this one at random unless told, but then the head's Ray
#                   client server waits (30 s at most, Ray 2.55) for the head to register to learn it, and on a busy
#                   node that wait runs out and `ray start --block` stops the whole head. Set others when the nodes run
#                   other Ray clusters (the Slurm test does).
#   RAY_TEMP_DIR    Ray's temporary folder on every node (default /tmp/ray-<job id>): the job's own folder keeps its
#                   address file away from other Ray users of the node, who would otherwise attach to this cluster.
#   EXPECTED_NODES  how many Ray nodes to wait for (default: the allocation's node count); NODE_WAIT_S: how long
#                   (default 600 s) once the head answers; HEAD_WAIT_S: how long the head may take to answer (600 s).
#   LOG_DIR         the job log `<script>-<job id>.log` and the Ray pid files (default REPO_ROOT/runs/slurm).
#   SRUN_CONTAINER_ARGS  srun options that run every step in a container, e.g. (pyxis)
#                   SRUN_CONTAINER_ARGS="--container-image=<image> --container-mounts=/data:/data" sbatch ...
#
# Every GPU node needs Python with the GPU stack (`pip install -e .[gpu]` in the image: torch, vllm 0.29.0, openrlhf
# 0.11.2, deepspeed, flash-attn) and Ray 2.55.0; a CPU node needs the CPU stack (`make setup` builds .venv).
#
# Do not put TOKENIZERS_PARALLELISM, NCCL_DEBUG or RAY_ENABLE_ZERO_COPY_TORCH_TENSORS into the job's env_vars:
# OpenRLHF's train() passes them to ray.init, and Ray refuses to merge a job and driver runtime env that both set
# the same variable. Export them in the environment instead; train() reads them from there.
#
#SBATCH --job-name=openrlhf-darts
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

TRAIN_SCRIPT=${1:?usage: sbatch [--nodes=N] examples/scripts/slurm_launch.sh examples/scripts/train_<name>.sh}
REPO_ROOT=${REPO_ROOT:-${SLURM_SUBMIT_DIR:-$(pwd)}}
RAY_VERSION=2.55.0
CPU_MODE=${CPU_MODE:-0}
GPUS_PER_NODE=${GPUS_PER_NODE:-$([[ ${CPU_MODE} == 1 ]] && echo 4 || echo 8)}
if [[ -z ${PYTHON:-} ]]; then
    PYTHON=python3
    [[ -x ${REPO_ROOT}/.venv/bin/python ]] && PYTHON=${REPO_ROOT}/.venv/bin/python
fi
RAY_PORT=${RAY_PORT:-6379}
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}
RAY_CLIENT_PORT=${RAY_CLIENT_PORT:-10001}
DASHBOARD_AGENT_PORT=${DASHBOARD_AGENT_PORT:-52365}
RUNTIME_ENV_AGENT_PORT=${RUNTIME_ENV_AGENT_PORT:-52366}
RAY_TEMP_DIR=${RAY_TEMP_DIR:-/tmp/ray-${SLURM_JOB_ID:-0}}
HEAD_WAIT_S=${HEAD_WAIT_S:-600}
NODE_WAIT_S=${NODE_WAIT_S:-600}
SRUN_CONTAINER_ARGS=${SRUN_CONTAINER_ARGS:-}
LOG_DIR=${LOG_DIR:-${REPO_ROOT}/runs/slurm}

# ---- the launcher's own checks, before any srun -----------------------------------------------------------------------
fail() {
    echo "slurm_launch.sh: $*" >&2
    exit 2
}
if [[ ! -f "${REPO_ROOT}/${TRAIN_SCRIPT#"${REPO_ROOT}"/}" ]]; then
    fail "training script ${TRAIN_SCRIPT} not found under ${REPO_ROOT}; pass a path relative to the repository"
fi
TRAIN_SCRIPT=${TRAIN_SCRIPT#"${REPO_ROOT}"/}
[[ ${CPU_MODE} == 0 || ${CPU_MODE} == 1 ]] || fail "CPU_MODE=${CPU_MODE} must be 0 (GPU mode) or 1 (CPU mode)"
for name in GPUS_PER_NODE HEAD_WAIT_S NODE_WAIT_S ${EXPECTED_NODES:+EXPECTED_NODES} ${RAY_NUM_CPUS:+RAY_NUM_CPUS}; do
    [[ ${!name} =~ ^[1-9][0-9]*$ ]] || fail "${name}=${!name} must be a positive whole number"
done
if [[ ${CPU_MODE} == 1 ]]; then
    RAY_NUM_CPUS=${RAY_NUM_CPUS:-$((GPUS_PER_NODE + 4))}
fi
if [[ ${CPU_MODE} == 0 && ${SLURM_GPUS_PER_NODE:-} == 0 ]]; then
    fail "the allocation has no GPUs (--gpus-per-node=0) but CPU_MODE is not set; set CPU_MODE=1 for Ray with" \
        "logical GPUs, or submit without --gpus-per-node=0"
fi
mkdir -p "${LOG_DIR}"

mapfile -t NODES < <(scontrol show hostnames "${SLURM_JOB_NODELIST}")
HEAD=${NODES[0]}
NUM_NODES=${#NODES[@]}
EXPECTED_NODES=${EXPECTED_NODES:-${NUM_NODES}}
# shellcheck disable=SC2086  # SRUN_CONTAINER_ARGS is a list of srun options
HEAD_IP=$(srun --overlap --nodes=1 --ntasks=1 -w "${HEAD}" ${SRUN_CONTAINER_ARGS} hostname --ip-address | awk '{print $1}')
MODE="GPU mode: ${GPUS_PER_NODE} GPUs per node"
[[ ${CPU_MODE} == 1 ]] && MODE="CPU mode: ${GPUS_PER_NODE} logical GPUs and ${RAY_NUM_CPUS} CPUs per node"
echo "Ray head ${HEAD} (${HEAD_IP}:${RAY_PORT}, dashboard ${DASHBOARD_PORT}), ${NUM_NODES} node(s), ${MODE}; ${PYTHON}"

# The `ray start` steps take a whole node: every CPU of it, and in GPU mode every GPU, or Ray's workers would be
# confined to the step's default share (one CPU, no GPU on clusters that constrain devices). The other steps share a
# node with --overlap.
CPUS_PER_NODE=${CPUS_PER_NODE:-${SLURM_CPUS_ON_NODE:-1}}
RAY_STEP=(--nodes=1 --ntasks=1 --cpus-per-task="${CPUS_PER_NODE}")
RAY_LABELS=(--num-gpus="${GPUS_PER_NODE}")
if [[ ${CPU_MODE} == 0 ]]; then
    RAY_STEP+=(--gpus-per-node="${GPUS_PER_NODE}")
fi
if [[ -n ${RAY_NUM_CPUS:-} ]]; then
    RAY_LABELS+=(--num-cpus="${RAY_NUM_CPUS}")
fi
RAY_COMMON=(--temp-dir="${RAY_TEMP_DIR}" --dashboard-agent-listen-port="${DASHBOARD_AGENT_PORT}"
    --runtime-env-agent-port="${RUNTIME_ENV_AGENT_PORT}" "${RAY_LABELS[@]}")
RAY_STATE=${LOG_DIR}/ray-${SLURM_JOB_ID}
mkdir -p "${RAY_STATE}"

# ensure_ray PYTHON RAY_VERSION: runs on every node (srun). PYTHON's Ray must be RAY_VERSION; pip installs it when it
# differs, except into an externally managed system Python (PEP 668), which pip must not touch: that fails with the fix.
ensure_ray() {
    local python=$1 version=$2 status=0
    local check='import os, sys, sysconfig
want = sys.argv[1]
try:
    import ray
    have = f"Ray {ray.__version__}"
except ImportError:
    have = "no Ray"
if have != f"Ray {want}":
    managed = os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
    if managed and sys.prefix == sys.base_prefix:
        sys.exit(f"{sys.executable} has {have}, not Ray {want}, and is an externally managed system Python (PEP 668), "
                 f"so pip may not install into it; set PYTHON to a virtual environment with ray[default]=={want} "
                 "(make setup builds .venv), or install Ray into the image")
    sys.exit(3)'
    "${python}" -c "${check}" "${version}" || status=$?
    if ((status == 3)); then
        echo "$(hostname): installing ray[default]==${version} into ${python}"
        "${python}" -m pip install --quiet "ray[default]==${version}"
    elif ((status != 0)); then
        return "${status}"
    fi
}

# ray_node PYTHON PIDFILE RAY_START_ARGS...: runs on one node (srun). Runs `ray start RAY_START_ARGS --block` and
# records its pid in PIDFILE. Exits 0 when stop_ray removed PIDFILE and stopped it, else with ray start's status.
ray_node() {
    local python=$1 pidfile=$2 status=0 pid
    shift 2
    # ray.scripts.scripts is the module behind the `ray` command; -m runs it with this interpreter.
    "${python}" -m ray.scripts.scripts start "$@" --block &
    pid=$!
    echo "${pid}" >"${pidfile}"
    wait "${pid}" || status=$?
    if [[ ! -e ${pidfile} ]]; then
        return 0
    fi
    return "${status}"
}

# stop_pid PID TEMP_DIR: runs on one node (srun). SIGTERM to `ray start` (pid PID, if its command line carries
# --temp-dir=TEMP_DIR), which stops the node's Ray processes; waits up to 60 s, then SIGKILL.
stop_pid() {
    local pid=$1 temp_dir=$2
    local cmdline
    cmdline=$(tr '\0' '\n' 2>/dev/null <"/proc/${pid}/cmdline") || return 0
    [[ -n ${cmdline} ]] || return 0 # exited, not yet reaped
    if ! grep -qxF -- "--temp-dir=${temp_dir}" <<<"${cmdline}"; then
        echo "$(hostname): pid ${pid} is not this job's ray start; left alone" >&2
        return 0
    fi
    kill -TERM "${pid}"
    for _ in $(seq 120); do
        [[ -d /proc/${pid} ]] || return 0
        sleep 0.5
    done
    echo "$(hostname): ray start (pid ${pid}) still running 60 s after SIGTERM; sending SIGKILL" >&2
    kill -KILL "${pid}"
}

RAY_SRUNS=()
stop_ray() {
    local status=$? node pid
    trap - EXIT
    set +e
    for node in "${NODES[@]}"; do
        [[ -s ${RAY_STATE}/${node}.pid ]] || continue
        pid=$(<"${RAY_STATE}/${node}.pid")
        rm -f "${RAY_STATE}/${node}.pid"
        # shellcheck disable=SC2086
        srun --overlap --nodes=1 --ntasks=1 -w "${node}" ${SRUN_CONTAINER_ARGS} \
            bash -c "$(declare -f stop_pid); stop_pid ${pid} '${RAY_TEMP_DIR}'"
    done
    for pid in "${RAY_SRUNS[@]}"; do
        for _ in $(seq 120); do
            kill -0 "${pid}" 2>/dev/null || break
            sleep 0.5
        done
    done
    echo "Ray stopped on ${NUM_NODES} node(s); job exit status ${status}"
    exit "${status}"
}
trap stop_ray EXIT

# run_ray_node NODE RAY_START_ARGS...: ray_node on NODE in the background.
run_ray_node() {
    local node=$1
    shift
    # shellcheck disable=SC2086
    srun "${RAY_STEP[@]}" -w "${node}" ${SRUN_CONTAINER_ARGS} bash -c "$(declare -f ray_node); ray_node \"\$@\"" \
        ray_node "${PYTHON}" "${RAY_STATE}/${node}.pid" "$@" &
    RAY_SRUNS+=($!)
}

# on_head COMMAND...: COMMAND on the head node, beside the Ray head step.
on_head() {
    # shellcheck disable=SC2086
    srun --overlap --nodes=1 --ntasks=1 -w "${HEAD}" ${SRUN_CONTAINER_ARGS} "$@"
}

# ---- Ray on every node: the version check, the head, then the other nodes ------------------------------------------
# shellcheck disable=SC2086
srun --overlap --nodes="${NUM_NODES}" --ntasks-per-node=1 ${SRUN_CONTAINER_ARGS} \
    bash -c "$(declare -f ensure_ray); ensure_ray \"\$@\"" ensure_ray "${PYTHON}" "${RAY_VERSION}"
HEAD_ARGS=(--head --node-ip-address="${HEAD_IP}" --port="${RAY_PORT}" --dashboard-host=0.0.0.0
    --dashboard-port="${DASHBOARD_PORT}" --ray-client-server-port="${RAY_CLIENT_PORT}" "${RAY_COMMON[@]}")
run_ray_node "${HEAD}" "${HEAD_ARGS[@]}"
HEAD_SRUN=$!
# The head is up when its dashboard answers (it serves `ray job submit`) and its Ray client server listens. A head that
# exits while starting (on a busy node a part of Ray can time out) is started again, twice at most.
HEAD_READY="import socket, urllib.request
urllib.request.urlopen('http://127.0.0.1:${DASHBOARD_PORT}/api/version', timeout=5)
# ray start writes the head's address (the node IP Ray chose) here once the node is up
ip = open('${RAY_TEMP_DIR}/ray_current_cluster').read().strip().rsplit(':', 1)[0]
socket.create_connection((ip, ${RAY_CLIENT_PORT}), timeout=5).close()"
head_tries=1
deadline=$((SECONDS + HEAD_WAIT_S))
until on_head "${PYTHON}" -c "${HEAD_READY}" 2>/dev/null; do
    if ! kill -0 "${HEAD_SRUN}" 2>/dev/null; then
        if ((head_tries == 3)); then
            echo "the Ray head on ${HEAD} exited ${head_tries} times while starting; see its ray start output above" >&2
            exit 1
        fi
        head_tries=$((head_tries + 1))
        echo "the Ray head on ${HEAD} exited while starting; starting it again (try ${head_tries} of 3)"
        run_ray_node "${HEAD}" "${HEAD_ARGS[@]}"
        HEAD_SRUN=$!
    fi
    if ((SECONDS > deadline)); then
        echo "the Ray head (${HEAD}, dashboard port ${DASHBOARD_PORT}, client port ${RAY_CLIENT_PORT}) was not up" \
            "within ${HEAD_WAIT_S} s (HEAD_WAIT_S); see its ray start output above" >&2
        exit 1
    fi
    sleep 2
done
echo "Ray head up"
for node in "${NODES[@]:1}"; do
    run_ray_node "${node}" --address="${HEAD_IP}:${RAY_PORT}" "${RAY_COMMON[@]}"
done

# Wait (up to NODE_WAIT_S, default 10 minutes) until EXPECTED_NODES nodes are alive, instead of sleeping a fixed time.
WAIT_FOR_NODES="import ray, sys, time
ray.init(address='${HEAD_IP}:${RAY_PORT}', logging_level='ERROR')
deadline = time.time() + ${NODE_WAIT_S}
alive = lambda: sum(node['Alive'] for node in ray.nodes())
while alive() < ${EXPECTED_NODES}:
    if time.time() > deadline:
        sys.exit(f'only {alive()} of ${EXPECTED_NODES} nodes joined the Ray cluster within ${NODE_WAIT_S} s '
                 '(NODE_WAIT_S); see the ray start output of the missing nodes above, or set EXPECTED_NODES')
    time.sleep(2)
print('all ${EXPECTED_NODES} node(s) joined')"
on_head "${PYTHON}" -c "${WAIT_FOR_NODES}"

# ---- the training job -------------------------------------------------------------------------------------------------
RUNTIME_ENV=$(printf '{"working_dir": "%s", "excludes": [".git", ".venv", "runs", "data", "*.safetensors", "*.bin"]}' \
    "${REPO_ROOT}")
# REPO_ROOT (the submit directory) must be on a filesystem every node mounts: the reward function, DATA and the run
# outputs (runs/) are read and written there; the working_dir upload only ships the code (Ray also leaves out what
# .gitignore lists), so data and runs stay out.
# The job's entrypoint does not inherit this shell's environment: forward PYTHON and the training scripts' knobs.
JOB_ENV=("REPO_ROOT=${REPO_ROOT}" "PYTHON=${PYTHON}")
for name in MODEL DATA RUN_NAME OUT_ROOT ACTOR_NODES VLLM_ENGINES VLLM_TP PROMPT_MAX MAX_NEW_TOKENS OVERLONG_BUFFER \
    STEPS; do
    if [[ -n "${!name:-}" ]]; then
        JOB_ENV+=("${name}=${!name}")
    fi
done
LOG_FILE="${LOG_DIR}/$(basename "${TRAIN_SCRIPT}" .sh)-${SLURM_JOB_ID}.log"
on_head "${PYTHON}" -m ray.scripts.scripts job submit \
    --address="http://127.0.0.1:${DASHBOARD_PORT}" \
    --runtime-env-json="${RUNTIME_ENV}" \
    -- env "${JOB_ENV[@]}" bash "${TRAIN_SCRIPT}" 2>&1 | tee "${LOG_FILE}"
