#!/usr/bin/env bash
# Tail-batching smoke run on one GPU: the baseline command of train_smoke_1gpu_baseline.sh plus the --tail_batching.*
# lines below (20 prompts launched per step for a batch of 16; the 4 aborted go back in front of the next step).
set -euo pipefail
RUN_NAME=${RUN_NAME:-smoke-1gpu-tail-batching}
# shellcheck source=common_smoke_1gpu.sh
source "$(dirname "${BASH_SOURCE[0]}")/common_smoke_1gpu.sh"

TAIL_BATCHING_ARGS=(
    --tail_batching.enable
    --tail_batching.launch_ratio 1.25
    --tail_batching.aborted_prompts defer
)
run_train openrlhf_darts.cli.train_ppo_ray "${BASE_ARGS[@]}" "${TAIL_BATCHING_ARGS[@]}"
