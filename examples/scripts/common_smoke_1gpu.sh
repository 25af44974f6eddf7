# Smoke test on one GPU: a 0.5B instruct model, a few short steps, everything colocated on the one GPU.
# Sourced by train_smoke_1gpu_{baseline,darts,tail_batching}.sh: BASE_ARGS is everything except the --darts.* /
# --tail_batching.* lines.
# Checks that a cluster image runs both entry points end to end; the numbers mean nothing.
# With --train.colocate_all the forwards share the GPU with vLLM, so DARTS runs without --darts.stream here.
# shellcheck shell=bash
# shellcheck source=common_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/common_env.sh"

MODEL=${MODEL:-Qwen/Qwen2.5-0.5B-Instruct}

# shellcheck disable=SC2034  # read by the train_*.sh scripts that source this file
BASE_ARGS=(
    --actor.model_name_or_path "${MODEL}"
    "${DATA_REWARD_ARGS[@]}"
    --data.max_samples 128
    # placement: one GPU shared by the actor and one vLLM engine
    --actor.num_nodes 1
    --actor.num_gpus_per_node 1
    --vllm.num_engines 1
    --vllm.tensor_parallel_size 1
    --vllm.gpu_memory_utilization 0.4
    --vllm.enable_prefix_caching
    --vllm.enable_sleep
    --ds.enable_sleep
    --train.colocate_all
    # rollout: 16 prompts x 4 samples, short responses
    --rollout.batch_size 16
    --rollout.n_samples_per_prompt 4
    --rollout.micro_batch_size 4
    --rollout.temperature 1.0
    --rollout.max_new_tokens 512
    --data.max_len 1536
    --algo.advantage.estimator group_norm
    --algo.kl.init_coef 0
    --train.batch_size 32
    --train.micro_batch_size 2
    --train.num_episodes 1
    --actor.adam.lr 1e-6
    --ds.zero_stage 2
    --ds.param_dtype bf16
    --actor.gradient_checkpointing_enable
    --train.seed 42
    "${OUTPUT_ARGS[@]}"
)
