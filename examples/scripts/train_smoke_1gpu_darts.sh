#!/usr/bin/env bash
# DARTS smoke run on one GPU: the baseline command of train_smoke_1gpu_baseline.sh plus the --darts.* lines below.
# n = 4: candidates in [4, 8], L = 1; no --darts.stream (rejected with --train.colocate_all).
set -euo pipefail
RUN_NAME=${RUN_NAME:-smoke-1gpu-darts}
# shellcheck source=common_smoke_1gpu.sh
source "$(dirname "${BASH_SOURCE[0]}")/common_smoke_1gpu.sh"

DARTS_ARGS=(
    --darts.enable
    --darts.selection dual_end
    --darts.num_long 1
    --darts.min_candidates 4
    --darts.max_candidates 8
)
run_train openrlhf_darts.cli.train_ppo_ray "${BASE_ARGS[@]}" "${DARTS_ARGS[@]}"
