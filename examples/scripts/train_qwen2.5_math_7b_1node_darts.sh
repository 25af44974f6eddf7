#!/usr/bin/env bash
# DARTS: the baseline command of train_qwen2.5_math_7b_1node_baseline.sh, run through openrlhf_darts' entry point,
# plus PAPER_DARTS_ARGS from common_reference_recipe.sh (paper settings: M = 8, candidates in [8, 16], L:K = 1:7,
# tail pruning, streaming).
set -euo pipefail
RUN_NAME=${RUN_NAME:-qwen2.5-math-7b-1node-darts}
# shellcheck source=common_qwen2.5_math_7b_1node.sh
source "$(dirname "${BASH_SOURCE[0]}")/common_qwen2.5_math_7b_1node.sh"

run_train openrlhf_darts.cli.train_ppo_ray "${BASE_ARGS[@]}" "${PAPER_DARTS_ARGS[@]}"
