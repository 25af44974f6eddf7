#!/usr/bin/env bash
# DARTS CPU smoke run in local mode: the baseline command of train_smoke_cpu_baseline.sh plus the --darts.* lines
# below (n = 4: candidates in [4, 8], L = 1, the paper's settings). Directly: bash
# examples/scripts/train_smoke_cpu_darts.sh; through Slurm (CPU mode):
#   CPU_MODE=1 sbatch --nodes=1 --gpus-per-node=0 examples/scripts/slurm_launch.sh examples/scripts/train_smoke_cpu_darts.sh
set -euo pipefail
RUN_NAME=${RUN_NAME:-smoke-cpu-darts}
# shellcheck source=common_smoke_cpu.sh
source "$(dirname "${BASH_SOURCE[0]}")/common_smoke_cpu.sh"

DARTS_ARGS=(
    --darts.enable
    --darts.selection dual_end
    --darts.num_long 1
    --darts.min_candidates 4
    --darts.max_candidates 8
)
run_train openrlhf_darts.local.train "${BASE_ARGS[@]}" "${DARTS_ARGS[@]}"
