#!/usr/bin/env bash
# Run one training script (baseline, DARTS or tail batching) on a Ray cluster built inside a Slurm allocation.
#
#   sbatch --nodes=4 examples/scripts/slurm_launch.sh examples/scripts/train_qwen2.5_32b_multinode_darts.sh
#   sbatch --nodes=4 examples/scripts/slurm_launch.sh examples/scripts/train_qwen2.5_32b_multinode_baseline.sh
#   sbatch --nodes=1 examples/scripts/slurm_launch.sh examples/scripts/train_qwen2.5_math_7b_1node_darts.sh
#   sbatch --nodes=1 examples/scripts/slurm_launch.sh examples/scripts/train_qwen2.5_math_7b_1node_tail_batching.sh
#
# Steps: the first node of the allocation starts the Ray head, every other node joins it (one srun each), the
# script waits until all nodes have registered, then submits the training script as a Ray job from the head. The job
# ships this repository as its working_dir, so `openrlhf_darts`, the reward function and the scripts reach every
# node; Ray puts the working_dir on the import path of every actor of the job.
#
# Every node needs Python with the GPU stack (`pip install -e .[gpu]` in the image: torch, vllm 0.29.0, openrlhf
# 0.11.2, deepspeed, flash-attn) and Ray 2.55.0, which OpenRLHF 0.11.2 pins; each node checks its Ray version and
# installs 2.55.0 if it differs. Run inside a container by setting SRUN_CONTAINER_ARGS, e.g.
#   SRUN_CONTAINER_ARGS="--container-image=<image> --container-mounts=/data:/data" sbatch ... (pyxis)
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
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
RAY_VERSION=2.55.0
RAY_PORT=${RAY_PORT:-6379}
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}
SRUN_CONTAINER_ARGS=${SRUN_CONTAINER_ARGS:-}
# The `ray start` steps take a whole node: every GPU and CPU of it, or Ray's workers would be confined to the step's
# default share (one CPU, no GPU on clusters that constrain devices). The other steps share a node with --overlap.
CPUS_PER_NODE=${CPUS_PER_NODE:-${SLURM_CPUS_ON_NODE:-1}}
RAY_STEP=(--nodes=1 --ntasks=1 --gpus-per-node="${GPUS_PER_NODE}" --cpus-per-task="${CPUS_PER_NODE}")
LOG_DIR=${LOG_DIR:-${REPO_ROOT}/runs/slurm}
mkdir -p "${LOG_DIR}"
if [[ ! -f "${REPO_ROOT}/${TRAIN_SCRIPT#"${REPO_ROOT}"/}" ]]; then
    echo "training script ${TRAIN_SCRIPT} not found under ${REPO_ROOT}; pass a path relative to the repository" >&2
    exit 2
fi
TRAIN_SCRIPT=${TRAIN_SCRIPT#"${REPO_ROOT}"/}

mapfile -t NODES < <(scontrol show hostnames "${SLURM_JOB_NODELIST}")
HEAD=${NODES[0]}
NUM_NODES=${#NODES[@]}
# shellcheck disable=SC2086  # SRUN_CONTAINER_ARGS is a list of srun options
HEAD_IP=$(srun --overlap --nodes=1 --ntasks=1 -w "${HEAD}" ${SRUN_CONTAINER_ARGS} hostname --ip-address | awk '{print $1}')
echo "Ray head ${HEAD} (${HEAD_IP}:${RAY_PORT}), ${NUM_NODES} node(s), ${GPUS_PER_NODE} GPUs each"

# Install Ray ${RAY_VERSION} unless the node already has exactly that version.
ENSURE_RAY="python3 -c 'import ray, sys; sys.exit(ray.__version__ != \"${RAY_VERSION}\")' 2>/dev/null \
|| pip install --quiet 'ray[default]==${RAY_VERSION}'"

# shellcheck disable=SC2086
srun "${RAY_STEP[@]}" -w "${HEAD}" ${SRUN_CONTAINER_ARGS} bash -c "${ENSURE_RAY} && ray start --head \
    --node-ip-address=${HEAD_IP} --port=${RAY_PORT} --dashboard-host=0.0.0.0 --dashboard-port=${DASHBOARD_PORT} \
    --num-gpus=${GPUS_PER_NODE} --block" &
sleep 10
for node in "${NODES[@]:1}"; do
    # shellcheck disable=SC2086
    srun "${RAY_STEP[@]}" -w "${node}" ${SRUN_CONTAINER_ARGS} bash -c "${ENSURE_RAY} && ray start \
        --address=${HEAD_IP}:${RAY_PORT} --num-gpus=${GPUS_PER_NODE} --block" &
done

# Wait (up to 10 minutes) until every node of the allocation has joined, instead of sleeping a fixed time.
WAIT_FOR_NODES="import ray, sys, time
ray.init(address='${HEAD_IP}:${RAY_PORT}', logging_level='ERROR')
deadline = time.time() + 600
while sum(node['Alive'] for node in ray.nodes()) < ${NUM_NODES}:
    if time.time() > deadline:
        sys.exit('only %d of ${NUM_NODES} nodes joined the Ray cluster' % sum(n['Alive'] for n in ray.nodes()))
    time.sleep(5)
print('all ${NUM_NODES} nodes joined')"
# shellcheck disable=SC2086
srun --overlap --nodes=1 --ntasks=1 -w "${HEAD}" ${SRUN_CONTAINER_ARGS} python3 -c "${WAIT_FOR_NODES}"

RUNTIME_ENV=$(printf '{"working_dir": "%s", "excludes": [".git", ".venv", "runs", "data", "*.safetensors", "*.bin"]}' \
    "${REPO_ROOT}")
# REPO_ROOT (the submit directory) must be on a filesystem every node mounts: the reward function, DATA and the run
# outputs (runs/) are read and written there; the working_dir upload only ships the code, so data and runs stay out.
# The job's entrypoint does not inherit this shell's environment: forward the training scripts' knobs that are set.
JOB_ENV=("REPO_ROOT=${REPO_ROOT}")
for name in MODEL DATA RUN_NAME OUT_ROOT ACTOR_NODES VLLM_ENGINES VLLM_TP PROMPT_MAX MAX_NEW_TOKENS OVERLONG_BUFFER; do
    if [[ -n "${!name:-}" ]]; then
        JOB_ENV+=("${name}=${!name}")
    fi
done
LOG_FILE="${LOG_DIR}/$(basename "${TRAIN_SCRIPT}" .sh)-${SLURM_JOB_ID}.log"
# shellcheck disable=SC2086
srun --overlap --nodes=1 --ntasks=1 -w "${HEAD}" ${SRUN_CONTAINER_ARGS} ray job submit \
    --address="http://127.0.0.1:${DASHBOARD_PORT}" \
    --runtime-env-json="${RUNTIME_ENV}" \
    -- env "${JOB_ENV[@]}" bash "${TRAIN_SCRIPT}" 2>&1 | tee "${LOG_FILE}"
