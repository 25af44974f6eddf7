# CPU smoke run: the local mode's settings (`python -m openrlhf_darts.local.compare`'s defaults: arithmetic word
# problems with the exact-answer reward, GRPO (group_norm), 8 prompts x n=4 per step, up to 256 new tokens) for
# STEPS=2 steps on the tiny random Qwen2 (`MODEL=tiny`, built in seconds and cached), through upstream's train_ppo_ray
# in local mode (`openrlhf_darts.local.train`: the vLLM-CPU engine behind the DARTS engine actor, CPU policy and
# reference actors, a weight-sync probe every step). The numbers mean nothing; it checks that the whole path runs.
# Sourced by train_smoke_cpu_{baseline,darts}.sh: BASE_ARGS is everything except the --darts.* lines.
#
# Run it directly (`bash examples/scripts/train_smoke_cpu_darts.sh`: local.train starts its own Ray cluster) or as the
# Ray job of slurm_launch.sh in CPU mode (local.train attaches to the job's cluster, which needs 3 GPU and 5 CPU
# labels; see slurm_launch.sh). Every step's record is printed as `step record {json}`; the run folder is
# OUT_ROOT/RUN_NAME (steps.jsonl, problems.jsonl, driver.log, the final model).
# PYTHON: the interpreter with this package (default python3; slurm_launch.sh passes the project's .venv).
# MODEL: tiny (default), tiny-verbose (compare's default policy; its first build takes a few CPU minutes), smollm2 or a
# folder. DATA is not read: the problems are written into the run folder.
# shellcheck shell=bash
# shellcheck source=common_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/common_env.sh"

MODEL=${MODEL:-tiny}
STEPS=${STEPS:-2}
PROMPTS=8
RUN_DIR=${OUT_ROOT}/${RUN_NAME}
# The model folder and the problems file; DRY_RUN=1 prints the command without building them.
MODEL_PATH=${MODEL}
PROBLEMS=${RUN_DIR}/problems.jsonl
if [[ "${DRY_RUN:-0}" != "1" ]]; then
    inputs=$(cd "${REPO_ROOT}" && "${PYTHON:-python3}" -m openrlhf_darts.local.inputs \
        --out_dir "${RUN_DIR}" --problems $((STEPS * PROMPTS)) --model "${MODEL}")
    IFS=$'\t' read -r MODEL_PATH PROBLEMS <<<"${inputs##*$'\n'}"
fi

# shellcheck disable=SC2034  # read by the train_*.sh scripts that source this file
BASE_ARGS=(
    # local.train's own flags: the run folder, the weight-sync probe
    --run_dir "${RUN_DIR}"
    --sync_probe
    --actor.model_name_or_path "${MODEL_PATH}"
    --data.prompt_dataset "${PROBLEMS}"
    --data.input_key prompt
    --data.label_key label
    --data.apply_chat_template
    --data.max_samples $((STEPS * PROMPTS))
    --data.max_len 768
    --reward.remote_url "${REPO_ROOT}/openrlhf_darts/bench/tasks.py"
    # rollout: 8 prompts x 4 samples per step
    --rollout.batch_size "${PROMPTS}"
    --rollout.n_samples_per_prompt 4
    --rollout.max_new_tokens 256
    --rollout.micro_batch_size 4
    --rollout.temperature 1.0
    --train.batch_size $((PROMPTS * 4))
    --train.micro_batch_size 4
    --train.num_episodes 1
    --train.seed 0
    --algo.advantage.estimator group_norm
    --algo.kl.init_coef 0.001
    --actor.adam.lr 1e-4
    --actor.lr_warmup_ratio 0
)
