# Sourced by every common_*.sh: where the repository is, and how a training command runs.
# shellcheck shell=bash

# The repository root (default: two levels above this file); the reward function and the DARTS package live there.
# slurm_launch.sh sets it to the submit directory on the shared filesystem, because a Ray job runs this script from
# an unpacked copy of its working_dir whose path differs between nodes and which is deleted after the job.
REPO_ROOT=${REPO_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
# Outputs (TensorBoard events, checkpoints) of every run go under OUT_ROOT/<run name>.
OUT_ROOT=${OUT_ROOT:-${REPO_ROOT}/runs}

# run_train MODULE ARGS...: `python3 -m MODULE ARGS...`.
# DRY_RUN=1 prints MODULE and then each argument on its own line instead; the contract tests read commands this way.
run_train() {
    if [[ "${DRY_RUN:-0}" == "1" ]]; then
        printf '%s\n' "$@"
        return 0
    fi
    cd "${REPO_ROOT}" || return 1
    exec "${PYTHON:-python3}" -m "$@"
}

: "${RUN_NAME:?set RUN_NAME before sourcing this file}"

# Prompts and the rule reward of every recipe. DATA: JSONL with {"prompt": <DAPO-Math-17k prompt text>,
# "label": <reference answer>}; docs/reproduce.md converts the Hugging Face dataset into this file.
DATA=${DATA:-${REPO_ROOT}/data/dapo-math-17k.jsonl}
# shellcheck disable=SC2034  # read by the common_*.sh files that source this one
DATA_REWARD_ARGS=(
    --data.prompt_dataset "${DATA}"
    --data.input_key prompt
    --data.label_key label
    --data.apply_chat_template
    --reward.remote_url "${REPO_ROOT}/examples/scripts/reward_math.py"
)
# Where a run writes: TensorBoard events, the wandb run name, checkpoints and the final model.
# shellcheck disable=SC2034
OUTPUT_ARGS=(
    --logger.tensorboard_dir "${OUT_ROOT}/tensorboard"
    --logger.wandb.run_name "${RUN_NAME}"
    --ckpt.path "${OUT_ROOT}/${RUN_NAME}/ckpt"
    --ckpt.output_dir "${OUT_ROOT}/${RUN_NAME}/model"
)
