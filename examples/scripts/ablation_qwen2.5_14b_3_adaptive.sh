#!/usr/bin/env bash
# Ablation arm 3, + adaptive allocation (paper: 1.63x): arm 2's command with candidates allocated per prompt in
# [8, 16] by the smoothed length spread, averaging 10 as in arm 2, and the paper's tail pruning of prompts that reach
# 16 (shortest-only there). These are the paper's DARTS settings (PAPER_DARTS_ARGS) plus --darts.stream_tokens.
# Shared recipe variant: ZeRO-2, no packing.
#   sbatch --nodes=4 examples/scripts/slurm_launch.sh examples/scripts/ablation_qwen2.5_14b_3_adaptive.sh
set -euo pipefail
RUN_NAME=${RUN_NAME:-qwen2.5-14b-ablation-3-adaptive}
# shellcheck source=common_qwen2.5_14b_ablation.sh
source "$(dirname "${BASH_SOURCE[0]}")/common_qwen2.5_14b_ablation.sh"

DARTS_ARGS=(
    --darts.enable
    --darts.selection dual_end
    --darts.num_long 1
    --darts.min_candidates 8
    --darts.max_candidates 16
    --darts.budget fixed
    --darts.avg_candidates 10
    --darts.tail_prune paper
    --darts.stream
    --darts.stream_tokens
)
run_train openrlhf_darts.cli.train_ppo_ray "${BASE_ARGS[@]}" "${DARTS_ARGS[@]}"
