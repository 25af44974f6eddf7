#!/usr/bin/env bash
# Ablation arm 1, token streaming only (paper: 1.09x): the command of ablation_qwen2.5_14b_0_baseline.sh through
# openrlhf_darts' entry point, plus the --darts.* lines below. M'_i = n = 8 for every prompt (min = max = 8), so
# nothing is selected or aborted; every candidate is scored chunk by chunk while it decodes (--darts.stream_tokens),
# finished groups while generation continues (--darts.stream). Shared recipe variant: ZeRO-2, no packing.
#   sbatch --nodes=4 examples/scripts/slurm_launch.sh examples/scripts/ablation_qwen2.5_14b_1_stream_tokens.sh
set -euo pipefail
RUN_NAME=${RUN_NAME:-qwen2.5-14b-ablation-1-stream-tokens}
# shellcheck source=common_qwen2.5_14b_ablation.sh
source "$(dirname "${BASH_SOURCE[0]}")/common_qwen2.5_14b_ablation.sh"

DARTS_ARGS=(
    --darts.enable
    --darts.selection dual_end
    --darts.num_long 1
    --darts.min_candidates 8
    --darts.max_candidates 8
    --darts.budget fixed
    --darts.avg_candidates 8
    --darts.tail_prune off
    --darts.stream
    --darts.stream_tokens
)
run_train openrlhf_darts.cli.train_ppo_ray "${BASE_ARGS[@]}" "${DARTS_ARGS[@]}"
