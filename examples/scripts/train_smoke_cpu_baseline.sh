#!/usr/bin/env bash
# Baseline CPU smoke run (upstream OpenRLHF's sample generation) in local mode; the DARTS twin adds only --darts.*
# lines. Directly: bash examples/scripts/train_smoke_cpu_baseline.sh; through Slurm (CPU mode):
#   CPU_MODE=1 sbatch --nodes=1 --gpus-per-node=0 examples/scripts/slurm_launch.sh examples/scripts/train_smoke_cpu_baseline.sh
set -euo pipefail
RUN_NAME=${RUN_NAME:-smoke-cpu-baseline}
# shellcheck source=common_smoke_cpu.sh
source "$(dirname "${BASH_SOURCE[0]}")/common_smoke_cpu.sh"

run_train openrlhf_darts.local.train "${BASE_ARGS[@]}"
