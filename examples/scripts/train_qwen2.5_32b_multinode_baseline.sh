#!/usr/bin/env bash
# Baseline: upstream OpenRLHF, Qwen2.5-32B (or 14B) GRPO on several nodes. The DARTS twin adds only --darts.* lines.
#   sbatch --nodes=4 examples/scripts/slurm_launch.sh examples/scripts/train_qwen2.5_32b_multinode_baseline.sh
set -euo pipefail
RUN_NAME=${RUN_NAME:-qwen2.5-32b-multinode-baseline}
# shellcheck source=common_qwen2.5_32b_multinode.sh
source "$(dirname "${BASH_SOURCE[0]}")/common_qwen2.5_32b_multinode.sh"

run_train openrlhf.cli.train_ppo_ray "${BASE_ARGS[@]}"
