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
# shellcheck source=common_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/common_env.sh"

MODEL=${MODEL:-Qwen/Qwen2.5-32B}
DATA=${DATA:-${REPO_ROOT}/data/dapo-math-17k.jsonl}
ACTOR_NODES=${ACTOR_NODES:-2}
VLLM_ENGINES=${VLLM_ENGINES:-4}
VLLM_TP=${VLLM_TP:-4}
PROMPT_MAX=${PROMPT_MAX:-2048}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-16384}
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
    # placement: vLLM engines and actor on separate GPUs, no reference model (no KL)
    --actor.num_nodes "${ACTOR_NODES}"
    --actor.num_gpus_per_node 8
    --vllm.num_engines "${VLLM_ENGINES}"
    --vllm.tensor_parallel_size "${VLLM_TP}"
    --vllm.gpu_memory_utilization 0.85
    --vllm.enable_prefix_caching
    # rollout: N = 128 prompts, M = 8 samples each
    --rollout.batch_size 128
    --rollout.n_samples_per_prompt 8
    --rollout.micro_batch_size 4
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
    # PPO update: mini-batch of 32 prompts x 8 = 256 samples, 4 updates per step
    --train.batch_size 256
    --train.micro_batch_size 1
    --train.num_episodes 1
    --train.max_epochs 1
    --actor.adam.lr 1e-6
    --actor.lr_warmup_ratio 0
    --ds.zero_stage 3
    --ds.param_dtype bf16
    --ds.packing_samples
    --ds.adam_offload
    --actor.gradient_checkpointing_enable
    --train.seed 42
    # outputs
    --logger.tensorboard_dir "${OUT_ROOT}/tensorboard"
    --logger.wandb.run_name "${RUN_NAME}"
    --ckpt.path "${OUT_ROOT}/${RUN_NAME}/ckpt"
    --ckpt.output_dir "${OUT_ROOT}/${RUN_NAME}/model"
    --ckpt.save_steps 20
)
