#!/usr/bin/env bash
# Tail batching, the comparison arm: the baseline command of train_qwen2.5_math_7b_1node_baseline.sh, run through
# openrlhf_darts' entry point, plus TAIL_BATCHING_ARGS from common_reference_recipe.sh (launch 1.25 x 256 prompts per
# step, train the first 256 groups to complete, defer the rest). DARTS stays off.
#   bash examples/scripts/train_qwen2.5_math_7b_1node_tail_batching.sh        (on the node), or
#   sbatch --nodes=1 examples/scripts/slurm_launch.sh examples/scripts/train_qwen2.5_math_7b_1node_tail_batching.sh
set -euo pipefail
RUN_NAME=${RUN_NAME:-qwen2.5-math-7b-1node-tail-batching}
# shellcheck source=common_qwen2.5_math_7b_1node.sh
source "$(dirname "${BASH_SOURCE[0]}")/common_qwen2.5_math_7b_1node.sh"

run_train openrlhf_darts.cli.train_ppo_ray "${BASE_ARGS[@]}" "${TAIL_BATCHING_ARGS[@]}"
