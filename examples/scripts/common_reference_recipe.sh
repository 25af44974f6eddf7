# The DARTS reference recipe (DARTS_SPEC.md §6), shared by the Qwen2.5-Math-7B and Qwen2.5-32B scripts: GRPO with the
# DAPO tricks (clip-higher 0.2/0.28, token-mean loss, overlong buffer, no KL), a PPO mini-batch of 32 prompts x 8,
# lr 1e-6, ZeRO-3 bf16 with packing; and the paper's DARTS settings (M = 8, candidates in [8, 16], L:K = 1:7, tail
# pruning, streaming), which the *_darts.sh scripts add.
# RECIPE_ZERO2_UNPACKED_ARGS is the same recipe with ZeRO-2 and without packing, the variant --darts.stream_tokens can
# run with (it rejects --ds.packing_samples and --ds.zero_stage 3; docs/streaming.md); the ablation scripts use it.
# Sourced by common_qwen2.5_math_7b_1node.sh, common_qwen2.5_32b_multinode.sh and common_qwen2.5_14b_ablation.sh.
# shellcheck shell=bash
# shellcheck source=common_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/common_env.sh"

PROMPT_MAX=${PROMPT_MAX:-2048}
OVERLONG_BUFFER=${OVERLONG_BUFFER:-4096}

# Everything but the ZeRO stage and packing.
RECIPE_TRAIN_ARGS=(
    # GRPO + DAPO tricks
    --algo.advantage.estimator group_norm
    --algo.kl.init_coef 0
    --actor.eps_clip_low_high 0.2 0.28
    --actor.loss_agg_mode token-mean
    --reward.overlong_buffer_len "${OVERLONG_BUFFER}"
    --reward.overlong_penalty_factor 1.0
    # PPO update: mini-batch of 32 prompts x 8 = 256 samples
    --train.batch_size 256
    --train.micro_batch_size 1
    --train.num_episodes 1
    --train.max_epochs 1
    --actor.adam.lr 1e-6
    --actor.lr_warmup_ratio 0
    --ds.param_dtype bf16
    --actor.gradient_checkpointing_enable
    --train.seed 42
)
# shellcheck disable=SC2034  # read by the files that source this one
RECIPE_ARGS=("${RECIPE_TRAIN_ARGS[@]}" --ds.zero_stage 3 --ds.packing_samples)
# shellcheck disable=SC2034
RECIPE_ZERO2_UNPACKED_ARGS=("${RECIPE_TRAIN_ARGS[@]}" --ds.zero_stage 2)

# shellcheck disable=SC2034
PAPER_DARTS_ARGS=(
    --darts.enable
    --darts.selection dual_end
    --darts.num_long 1
    --darts.min_candidates 8
    --darts.max_candidates 16
    --darts.budget fixed
    --darts.avg_candidates 10
    --darts.tail_prune paper
    --darts.stream
)

# The tail-batching comparison arm (RollPacker-style, DARTS_SPEC.md §1, §5), which the *_tail_batching.sh scripts add
# instead of the DARTS lines: launch ceil(1.25 x 256) = 320 prompts per step, train the first 256 groups to complete,
# abort the other 64 and put them back in front of the next step's fresh prompts (no deferral cap: a prompt that keeps
# losing the race is trained by the end of its epoch). DARTS stays off (the two are separate arms against the same
# baseline).
# shellcheck disable=SC2034
TAIL_BATCHING_ARGS=(
    --tail_batching.enable
    --tail_batching.launch_ratio 1.25
    --tail_batching.aborted_prompts defer
)
