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
