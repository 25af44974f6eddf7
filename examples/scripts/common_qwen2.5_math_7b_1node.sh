# Qwen2.5-Math-7B, GRPO with the DAPO tricks, DAPO-Math-17k-style data, one node of 8 GPUs.
# Sourced by train_qwen2.5_math_7b_1node_{baseline,darts}.sh: BASE_ARGS is everything except the --darts.* lines.
#
# Settings follow the DARTS reference scripts (DARTS_SPEC.md §6): 256 prompts x 8 samples per step, PPO mini-batch of
# 32 prompts, lr 1e-6, clip 0.2/0.28 (clip-higher), token-mean loss, no KL, prompts <= 2048 and responses <= 8192
# tokens, DAPO overlong buffer 4096, temperature 1.0. The reference uses 4 nodes with 4 rollout + 4 training GPUs
# each; on one node: 4 vLLM engines (TP 1) and 4 ZeRO-3 actor GPUs, not colocated, so --darts.stream can overlap.
# Qwen2.5-Math-7B's config allows 4,096 positions; for 2048 + 8192 point MODEL at a copy whose config.json sets
# max_position_embeddings >= 10240 (as the DAPO/VeRL recipes do), or lower MAX_NEW_TOKENS and OVERLONG_BUFFER.
# shellcheck shell=bash
# shellcheck source=common_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/common_env.sh"

MODEL=${MODEL:-Qwen/Qwen2.5-Math-7B}
# JSONL with {"prompt": <DAPO-Math-17k prompt text>, "label": <reference answer>}; docs/reproduce.md converts the
# Hugging Face dataset into this file.
DATA=${DATA:-${REPO_ROOT}/data/dapo-math-17k.jsonl}
PROMPT_MAX=${PROMPT_MAX:-2048}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-8192}
OVERLONG_BUFFER=${OVERLONG_BUFFER:-4096}
: "${RUN_NAME:?set RUN_NAME before sourcing this file}"

# shellcheck disable=SC2034  # read by the train_*.sh scripts that source this file
BASE_ARGS=(
    --actor.model_name_or_path "${MODEL}"
    --data.prompt_dataset "${DATA}"
    --data.input_key prompt
    --data.label_key label
    --data.apply_chat_template
    --reward.remote_url "${REPO_ROOT}/examples/scripts/reward_math.py"
    # placement: 4 vLLM engines + 4 actor GPUs, no reference model (no KL)
    --actor.num_nodes 1
    --actor.num_gpus_per_node 4
    --vllm.num_engines 4
    --vllm.tensor_parallel_size 1
    --vllm.gpu_memory_utilization 0.85
    --vllm.enable_prefix_caching
    # rollout: N = 256 prompts, M = 8 samples each
    --rollout.batch_size 256
    --rollout.n_samples_per_prompt 8
    --rollout.micro_batch_size 8
    --rollout.temperature 1.0
    --rollout.max_new_tokens "${MAX_NEW_TOKENS}"
    --data.max_len $((PROMPT_MAX + MAX_NEW_TOKENS))
    # GRPO + DAPO tricks
    --algo.advantage.estimator group_norm
    --algo.kl.init_coef 0
    --actor.eps_clip_low_high 0.2 0.28
    --actor.loss_agg_mode token-mean
    --reward.overlong_buffer_len "${OVERLONG_BUFFER}"
    --reward.overlong_penalty_factor 1.0
    # PPO update: mini-batch of 32 prompts x 8 = 256 samples, 8 updates per step
    --train.batch_size 256
    --train.micro_batch_size 1
    --train.num_episodes 1
    --train.max_epochs 1
    --actor.adam.lr 1e-6
    --actor.lr_warmup_ratio 0
    --ds.zero_stage 3
    --ds.param_dtype bf16
    --ds.packing_samples
    --actor.gradient_checkpointing_enable
    --train.seed 42
    # outputs
    --logger.tensorboard_dir "${OUT_ROOT}/tensorboard"
    --logger.wandb.run_name "${RUN_NAME}"
    --ckpt.path "${OUT_ROOT}/${RUN_NAME}/ckpt"
    --ckpt.output_dir "${OUT_ROOT}/${RUN_NAME}/model"
    --ckpt.save_steps 50
)
