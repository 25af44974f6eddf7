# Qwen2.5-Math-7B, GRPO with the DAPO tricks, DAPO-Math-17k-style data, one node of 8 GPUs.
# Sourced by train_qwen2.5_math_7b_1node_{baseline,darts,tail_batching}.sh: BASE_ARGS is everything except the
# --darts.* / --tail_batching.* lines.
#
# Settings follow the DARTS reference scripts (DARTS_SPEC.md §6): 256 prompts x 8 samples per step, PPO mini-batch of
# 32 prompts, lr 1e-6, clip 0.2/0.28 (clip-higher), token-mean loss, no KL, prompts <= 2048 and responses <= 8192
# tokens, DAPO overlong buffer 4096, temperature 1.0. The reference uses 4 nodes with 4 rollout + 4 training GPUs
# each; on one node: 4 vLLM engines (TP 1) and 4 ZeRO-3 actor GPUs, not colocated, so --darts.stream can overlap.
# Qwen2.5-Math-7B's config allows 4,096 positions; for 2048 + 8192 point MODEL at a copy whose config.json sets
# max_position_embeddings >= 10240 (as the DAPO/VeRL recipes do), or lower MAX_NEW_TOKENS and OVERLONG_BUFFER.
# shellcheck shell=bash
# shellcheck source=common_reference_recipe.sh
source "$(dirname "${BASH_SOURCE[0]}")/common_reference_recipe.sh"

MODEL=${MODEL:-Qwen/Qwen2.5-Math-7B}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-8192}

# shellcheck disable=SC2034  # read by the train_*.sh scripts that source this file
BASE_ARGS=(
    --actor.model_name_or_path "${MODEL}"
    "${DATA_REWARD_ARGS[@]}"
    # placement: 4 vLLM engines + 4 actor GPUs, no reference model (no KL)
    --actor.num_nodes 1
    --actor.num_gpus_per_node 4
    --vllm.num_engines 4
    --vllm.tensor_parallel_size 1
    --vllm.gpu_memory_utilization 0.85
    --vllm.enable_prefix_caching
    # rollout: N = 256 prompts, M = 8 samples each (8 PPO updates per step)
    --rollout.batch_size 256
    --rollout.n_samples_per_prompt 8
    --rollout.micro_batch_size 8
    --rollout.temperature 1.0
    --rollout.max_new_tokens "${MAX_NEW_TOKENS}"
    --data.max_len $((PROMPT_MAX + MAX_NEW_TOKENS))
    "${RECIPE_ARGS[@]}"
    "${OUTPUT_ARGS[@]}"
    --ckpt.save_steps 50
)
