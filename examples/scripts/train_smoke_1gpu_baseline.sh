#!/usr/bin/env bash
# Baseline smoke run on one GPU (upstream OpenRLHF). The DARTS twin adds only --darts.* lines.
set -euo pipefail
RUN_NAME=${RUN_NAME:-smoke-1gpu-baseline}
# shellcheck source=common_smoke_1gpu.sh
source "$(dirname "${BASH_SOURCE[0]}")/common_smoke_1gpu.sh"

run_train openrlhf.cli.train_ppo_ray "${BASE_ARGS[@]}"
