#!/usr/bin/env bash
# DARTS: the baseline command of train_qwen2.5_32b_multinode_baseline.sh, run through openrlhf_darts' entry point,
# plus PAPER_DARTS_ARGS from common_reference_recipe.sh (paper settings: M = 8, candidates in [8, 16], L:K = 1:7,
# tail pruning, streaming).
#   sbatch --nodes=4 examples/scripts/slurm_launch.sh examples/scripts/train_qwen2.5_32b_multinode_darts.sh
set -euo pipefail
RUN_NAME=${RUN_NAME:-qwen2.5-32b-multinode-darts}
# shellcheck source=common_qwen2.5_32b_multinode.sh
source "$(dirname "${BASH_SOURCE[0]}")/common_qwen2.5_32b_multinode.sh"

run_train openrlhf_darts.cli.train_ppo_ray "${BASE_ARGS[@]}" "${PAPER_DARTS_ARGS[@]}"
