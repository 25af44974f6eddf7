#!/usr/bin/env bash
# Ablation arm 0, baseline: upstream OpenRLHF, Qwen2.5-14B GRPO on 32 GPUs, on the ablation's shared recipe variant
# (ZeRO-2, no sample packing; common_qwen2.5_14b_ablation.sh says why), so this is not the reference recipe's baseline.
# Arms 1-3 add only --darts.* lines to this command.
#   sbatch --nodes=4 examples/scripts/slurm_launch.sh examples/scripts/ablation_qwen2.5_14b_0_baseline.sh
set -euo pipefail
RUN_NAME=${RUN_NAME:-qwen2.5-14b-ablation-0-baseline}
# shellcheck source=common_qwen2.5_14b_ablation.sh
source "$(dirname "${BASH_SOURCE[0]}")/common_qwen2.5_14b_ablation.sh"

run_train openrlhf.cli.train_ppo_ray "${BASE_ARGS[@]}"
