# The paper's ablation (DARTS_SPEC.md §5): Qwen2.5-14B, GRPO with the DAPO tricks, DAPO-Math-17k-style data, 32 GPUs.
# Sourced by the four ablation_qwen2.5_14b_*.sh scripts: BASE_ARGS is everything except the --darts.* lines, and each
# arm adds to the previous one (speedups on 32 GPUs as a secondary summary of the paper reports them, unverified):
#   0 baseline                                         (upstream OpenRLHF)
#   1 token streaming only, M'_i = n                   1.09x
#   2 + dual-end selection with a uniform budget       1.40x
#   3 + adaptive allocation (and tail pruning)         1.63x
#
# The ablation's baseline is NOT the reference recipe's baseline. --darts.stream_tokens rejects sample packing and
# ZeRO-3 (docs/streaming.md), and the reference recipe packs on ZeRO-3, so all four arms, the baseline included, run
# RECIPE_ZERO2_UNPACKED_ARGS (common_reference_recipe.sh): the same recipe with --ds.zero_stage 2 and no
# --ds.packing_samples. Micro-batches are padded instead of packed and every actor GPU holds a full bf16 copy of the
# weights, so compare the arms with each other, never with train_qwen2.5_32b_multinode_*.sh runs.
#
# Otherwise the settings of common_qwen2.5_32b_multinode.sh for 14B (DARTS_SPEC.md §6, larger models): 128 prompts x 8
# samples per step, responses <= 16384 tokens, PPO mini-batch of 32 prompts, lr 1e-6, clip 0.2/0.28, token-mean loss,
# no KL; 4 nodes x 8 GPUs: 8 vLLM engines x TP 2 (16 GPUs) and a 16-GPU actor on 2 nodes, not colocated, so
# streaming can overlap scoring with generation. Launch each arm, one after the other, with slurm_launch.sh:
#   sbatch --nodes=4 examples/scripts/slurm_launch.sh examples/scripts/ablation_qwen2.5_14b_0_baseline.sh
#
# Token streaming memory: each streamed sample holds a KV cache on its policy actor, 2 x 48 layers x 8 KV heads x 128
# x 2 bytes = 192 KiB per token for Qwen2.5-14B (3 GiB at 16K tokens). Arm 1 streams every sample (1024 per step over
# 16 actors, 64 each, OPENRLHF_DARTS_MAX_LIVE_CACHES's default cap); lower the cap if that does not fit beside the
# weights. The trainer and model actors read the cap from their own environment, so it must reach the Ray workers
# (the job's runtime_env env_vars), not only this shell.
# shellcheck shell=bash
# shellcheck source=common_reference_recipe.sh
source "$(dirname "${BASH_SOURCE[0]}")/common_reference_recipe.sh"

MODEL=${MODEL:-Qwen/Qwen2.5-14B}
ACTOR_NODES=${ACTOR_NODES:-2}
VLLM_ENGINES=${VLLM_ENGINES:-8}
VLLM_TP=${VLLM_TP:-2}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-16384}

# shellcheck disable=SC2034  # read by the ablation_*.sh scripts that source this file
BASE_ARGS=(
    --actor.model_name_or_path "${MODEL}"
    "${DATA_REWARD_ARGS[@]}"
    # placement: vLLM engines and actor on separate GPUs, no reference model (no KL)
    --actor.num_nodes "${ACTOR_NODES}"
    --actor.num_gpus_per_node 8
    --vllm.num_engines "${VLLM_ENGINES}"
    --vllm.tensor_parallel_size "${VLLM_TP}"
    --vllm.gpu_memory_utilization 0.85
    --vllm.enable_prefix_caching
    # rollout: N = 128 prompts, M = 8 samples each (4 PPO updates per step)
    --rollout.batch_size 128
    --rollout.n_samples_per_prompt 8
    --rollout.micro_batch_size 4
    --rollout.temperature 1.0
    --rollout.max_new_tokens "${MAX_NEW_TOKENS}"
    --data.max_len $((PROMPT_MAX + MAX_NEW_TOKENS))
    # the reference recipe on ZeRO-2 without packing (see above)
    "${RECIPE_ZERO2_UNPACKED_ARGS[@]}"
    --ds.adam_offload
    "${OUTPUT_ARGS[@]}"
    --ckpt.save_steps 20
)
