# Qwen2.5-32B (or 14B), GRPO with the DAPO tricks, DAPO-Math-17k-style data, several 8-GPU nodes.
# Sourced by train_qwen2.5_32b_multinode_{baseline,darts}.sh: BASE_ARGS is everything except the --darts.* lines.
# Launch on Slurm with slurm_launch.sh (one Ray cluster over the allocation), e.g. for 4 nodes:
#   sbatch --nodes=4 examples/scripts/slurm_launch.sh examples/scripts/train_qwen2.5_32b_multinode_darts.sh
#
# Settings follow the DARTS reference scripts for larger models (DARTS_SPEC.md §6): 128 prompts x 8 samples per
# step, responses <= 16384 tokens, PPO mini-batch of 32 prompts, lr 1e-6, clip 0.2/0.28, token-mean loss, no KL.
# Default placement for 4 nodes (32 GPUs): 4 vLLM engines x TP 4 (16 GPUs) and a 16-GPU ZeRO-3 actor on 2 nodes;
# rollout and training GPUs are separate, so --darts.stream can overlap scoring with generation.
# Qwen2.5-14B: MODEL=Qwen/Qwen2.5-14B VLLM_TP=2 VLLM_ENGINES=8 (same 32 GPUs).
# shellcheck shell=bash
# shellcheck source=common_reference_recipe.sh
source "$(dirname "${BASH_SOURCE[0]}")/common_reference_recipe.sh"

MODEL=${MODEL:-Qwen/Qwen2.5-32B}
ACTOR_NODES=${ACTOR_NODES:-2}
VLLM_ENGINES=${VLLM_ENGINES:-4}
VLLM_TP=${VLLM_TP:-4}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-16384}

# shellcheck disable=SC2034  # read by the train_*.sh scripts that source this file
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
    "${RECIPE_ARGS[@]}"
    --ds.adam_offload
    "${OUTPUT_ARGS[@]}"
    --ckpt.save_steps 20
)
