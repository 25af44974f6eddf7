"""Local mode's inputs as files, for runs of `local.train` outside `local.compare`: the policy model folder and the
prompts file. `python -m openrlhf_darts.local.inputs --out_dir DIR --problems N` writes `DIR/problems.jsonl` and
prints, as its last line, `<model folder><TAB><problems file>`; examples/scripts/common_smoke_cpu.sh reads that line.
`grpo_flags` are the upstream flags every local GRPO run shares (`local.compare`, `bench.dynamics`).

The problems are `local.sft.mixed_problems` (`bench.tasks` problems, the `local.sft.DEFAULT_DIFFICULTY` mix by default) as
`{"prompt", "label"}` lines, the keys `--data.input_key prompt --data.label_key label` name; the reward for them is the
exact-answer rule in `bench/tasks.py` (`--reward.remote_url`). `--model`: tiny-verbose (`local.compare`'s default,
`local.sft`; built and cached on first use, a few CPU minutes), or what `models.resolve_model` takes (tiny, smollm2, a
folder).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from openrlhf_darts.local.sft import DEFAULT_DIFFICULTY, DIFFICULTIES, mixed_problems


def policy_path(model: str, difficulty: str = DEFAULT_DIFFICULTY) -> str:
    """The folder of `model`: "tiny-verbose", the SFT policy of mix `difficulty` (built and cached on first use), or
    what `models.resolve_model` takes."""
    if model == "tiny-verbose":
        from openrlhf_darts.local.sft import ensure_verbose_model

        return ensure_verbose_model(difficulty=difficulty)
    from openrlhf_darts.models import resolve_model

    return resolve_model(model)


def write_problems(path: str | Path, num: int, seed: int, difficulty: str = DEFAULT_DIFFICULTY) -> Path:
    """Write `num` problems of the `difficulty` mix as `{"prompt", "label"}` JSONL lines to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    problems = mixed_problems(num, seed, difficulty)
    path.write_text("".join(json.dumps({"prompt": p["prompt"], "label": p["answer"]}) + "\n" for p in problems))
    return path


def grpo_flags(
    *,
    model_path: str,
    prompt_file: str | Path,
    max_samples: int,
    max_len: int,
    reward_file: str,
    prompts_per_step: int,
    n: int,
    max_new_tokens: int,
    lr: float,
    kl_init_coef: str,
) -> list[str]:
    """Upstream flags of a local GRPO run, the ones `local.compare` and `bench.dynamics` share: the prompts file of
    `write_problems` (chat template applied), `group_norm` advantages, one episode, one PPO batch per rollout
    (`prompts_per_step` x `n` samples, micro-batches of one group), temperature 1, no learning-rate warm-up. Each
    caller adds its own (seed, evaluation); the order is fixed, since `bench.dynamics --reuse-finished` compares it."""
    return [
        "--actor.model_name_or_path", model_path,
        "--data.prompt_dataset", str(prompt_file),
        "--data.input_key", "prompt",
        "--data.label_key", "label",
        "--data.apply_chat_template",
        "--data.max_samples", str(max_samples),
        "--data.max_len", str(max_len),
        "--reward.remote_url", reward_file,
        "--rollout.batch_size", str(prompts_per_step),
        "--rollout.n_samples_per_prompt", str(n),
        "--rollout.max_new_tokens", str(max_new_tokens),
        "--rollout.micro_batch_size", str(n),
        "--rollout.temperature", "1.0",
        "--train.batch_size", str(prompts_per_step * n),
        "--train.micro_batch_size", str(n),
        "--train.num_episodes", "1",
        "--algo.advantage.estimator", "group_norm",
        "--algo.kl.init_coef", kl_init_coef,
        "--actor.adam.lr", str(lr),
        "--actor.lr_warmup_ratio", "0",
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out_dir", required=True, help="folder for problems.jsonl")
    parser.add_argument("--problems", type=int, required=True, help="how many prompts (steps x prompts per step)")
    parser.add_argument("--model", default="tiny-verbose", help="tiny-verbose (default), smollm2, tiny, or a folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--difficulty", choices=sorted(DIFFICULTIES), default=DEFAULT_DIFFICULTY)
    args = parser.parse_args(argv)
    if args.problems < 1:
        raise ValueError(f"--problems={args.problems} must be >= 1")
    model = policy_path(args.model)
    data = write_problems(Path(args.out_dir).resolve() / "problems.jsonl", args.problems, args.seed, args.difficulty)
    print(f"{model}\t{data}")


if __name__ == "__main__":
    main()
