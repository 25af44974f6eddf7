#!/usr/bin/env bash
# Ablation arm 2, + dual-end selection with a uniform budget (paper: 1.40x): arm 1's command with 10 candidates for
# every prompt (min = max = avg = 10, no allocation), of which dual-end selection keeps the 7 shortest and the longest
# (L:K = 1:7). The average of 10 is arm 3's budget, so arm 3 differs only in how the same budget is spread.
# Shared recipe variant: ZeRO-2, no packing.
#   sbatch --nodes=4 examples/scripts/slurm_launch.sh examples/scripts/ablation_qwen2.5_14b_2_dual_end_uniform.sh
set -euo pipefail
RUN_NAME=${RUN_NAME:-qwen2.5-14b-ablation-2-dual-end-uniform}
# shellcheck source=common_qwen2.5_14b_ablation.sh
source "$(dirname "${BASH_SOURCE[0]}")/common_qwen2.5_14b_ablation.sh"

DARTS_ARGS=(
    --darts.enable
    --darts.selection dual_end
    --darts.num_long 1
    --darts.min_candidates 10
    --darts.max_candidates 10
    --darts.budget fixed
    --darts.avg_candidates 10
    --darts.tail_prune off
    --darts.stream
    --darts.stream_tokens
)
run_train openrlhf_darts.cli.train_ppo_ray "${BASE_ARGS[@]}" "${DARTS_ARGS[@]}"
