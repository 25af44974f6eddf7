#!/usr/bin/env bash
# Baseline: upstream OpenRLHF, Qwen2.5-Math-7B GRPO on one 8-GPU node. The DARTS twin adds only --darts.* lines.
#   bash examples/scripts/train_qwen2.5_math_7b_1node_baseline.sh        (on the node, or via slurm_launch.sh)
set -euo pipefail
RUN_NAME=${RUN_NAME:-qwen2.5-math-7b-1node-baseline}
# shellcheck source=common_qwen2.5_math_7b_1node.sh
source "$(dirname "${BASH_SOURCE[0]}")/common_qwen2.5_math_7b_1node.sh"

run_train openrlhf.cli.train_ppo_ray "${BASE_ARGS[@]}"
