"""Rollout comparison: OpenRLHF's baseline against DARTS shortest-only, DARTS dual-end and tail batching, on one real
vLLM engine.

    python -m openrlhf_darts.bench.rollout [--model tiny|smollm2|PATH] [--n 8] [--num-prompts 16] [--max-tokens 128]
                                           [--task builtin|gsm_symbolic|...] [--prompts FILE.jsonl]
                                           [--variants baseline shortest_only dual_end tail_batching]
                                           [--tail-launch-ratio 1.25] [--out runs/bench_rollout] [--seed 0]

One process, one local Ray cluster, ONE engine built by OpenRLHF's ``create_vllm_engines`` with
``DartsRolloutRayActor`` (prefix caching on). The same prompts and sampling parameters go through the variants, back
to back, each dispatched the way the samples generators do it (one Ray call per prompt, all prompts at once):

- ``baseline``: upstream's path, ``generate_responses(num_samples=n)``; every candidate is kept;
- ``shortest_only``: ``generate_group`` with ceil(1.5 n) candidates, ``GroupPlan(num_long=0)``: the n shortest valid
  candidates are kept and the rest are aborted as soon as they cannot be among them (DARTS_SPEC.md §3(c));
- ``dual_end``: ceil(1.25 n) candidates, ``num_long=1``: every candidate runs to the end, n-1 shortest + 1 longest
  kept;
- ``tail_batching`` (the comparison arm, ``--tail_batching.*``): ceil(r B) prompts of n samples each
  (``generate_tail_group``, r = ``--tail-launch-ratio``), the B = ``--num-prompts`` groups that complete first are
  kept, the rest are aborted on the engine (``abort_tail_groups``) the moment the B-th completes. Its first B prompts
  are the other variants' prompts, the extra ones come from the same task (or the next lines of ``--prompts``). One
  step only: the deferred prompts a training run would bring back next step are not measured here (the simulator's
  ``tail_batching`` arm runs steps in sequence).

Prompts: ``--task`` (``bench.tasks``): the built-in arithmetic word problems (default) or a reasoning-gym dataset such
as ``gsm_symbolic``, rendered through the model's chat template, with that task's reward computed in the engine (the
exact-answer rule, or the dataset's own scorer); or ``--prompts FILE.jsonl``, used verbatim.

A short warm-up generate runs first, and the prefix cache is reset before each variant, so no variant starts warmer.

The figures (engine iterations, longest and oracle longest request, tokens generated, waste, length percentiles) are
defined in `bench/rollout_report.py`; the engine start and the dispatch of each variant are `bench/rollout_engine.py`.

**Tiny model.** Its weights are random and it rarely emits EOS, so by default 16 ordinary tokens are added as extra
stop tokens (``--extra-stop-tokens``; ``stop_token_ids`` in every request of every variant, ``models/stopping.py``) to
get a realistic spread of lengths; the output records this. Real models (``smollm2``, a folder) use none by default.

Writes ``report.json`` (figures plus every prompt's candidate lengths, truncation and abort flags per variant, so
``python -m openrlhf_darts.sim`` can replay them), ``lengths.png`` and ``table.txt`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from openrlhf_darts.backends.cpu import settings
from openrlhf_darts.bench.gym_tasks import REASONING_GYM_VERSION, SYSTEM_PROMPT_NAME
from openrlhf_darts.bench.rollout_engine import (
    CPU_BLOCK_SIZE,
    MIN_KV_CACHE_BYTES,
    blocks_needed,
    create_engine,
    engine_limits,
    init_ray,
    kv_bytes_per_token,
    rollout_sampling_params,
    run_tail_variant,
    run_variant,
)
from openrlhf_darts.bench.rollout_report import format_table, ratios_vs_baseline, summarize, write_outputs
from openrlhf_darts.bench.tasks import BUILTIN, TASK_FLAG_HELP, check_task, read_prompt_file, reward_file
from openrlhf_darts.core.tail_batching import launch_count
from openrlhf_darts.core.types import GroupPlan
from openrlhf_darts.models.stopping import TINY_STOP_TOKENS, stop_token_ids

VARIANTS = ("baseline", "shortest_only", "dual_end")
TAIL_BATCHING = "tail_batching"  # the comparison arm: more prompts launched, the first B groups kept
ALL_VARIANTS = (*VARIANTS, TAIL_BATCHING)
REWARD_FILE = str(Path(__file__).resolve().parent / "tasks.py")


# ---- configuration -----------------------------------------------------------------------------------------------
def variant_plans(n: int) -> dict[str, GroupPlan | None]:
    """The plan of each variant for group size n; None for the baseline, which takes upstream's path."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(
            f"--n={n!r} is below 2; dual-end keeps n-1 short + 1 long, so it needs n >= 2 (the paper uses 8)"
        )
    return {
        "baseline": None,
        "shortest_only": GroupPlan(num_candidates=math.ceil(1.5 * n), num_keep=n, num_long=0),
        "dual_end": GroupPlan(num_candidates=math.ceil(1.25 * n), num_keep=n, num_long=1),
    }


def candidates_per_prompt(name: str, n: int) -> int:
    if name == TAIL_BATCHING:
        return n
    plan = variant_plans(n)[name]
    return n if plan is None else plan.num_candidates


def load_prompts(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Prompts (used verbatim, no chat template) and labels (``label`` or ``answer``, else "") from a JSONL file."""
    rows = [item for _, item in read_prompt_file(path, "--prompts")]
    return [item["prompt"] for item in rows], [str(item.get("label", item.get("answer", ""))) for item in rows]


def task_prompts(tokenizer, task: str, num: int, seed: int) -> tuple[list[str], list[str]]:
    """``num`` problems of ``task`` (``bench.tasks.task_problems``) through the model's chat template, and labels."""
    from openrlhf_darts.bench.tasks import task_problems

    problems = task_problems(task, num, seed)
    prompts = [
        tokenizer.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True) for p in problems
    ]
    return prompts, [p["label"] for p in problems]


def builtin_prompts(tokenizer, num: int, seed: int) -> tuple[list[str], list[str]]:
    """The built-in arithmetic word problems, rendered through the model's chat template with a generation prompt."""
    return task_prompts(tokenizer, "builtin", num, seed)


# ---- the benchmark -----------------------------------------------------------------------------------------------
def run_benchmark(
    engine,
    tokenizer,
    prompts: Sequence[str],
    labels: Sequence[str],
    n: int,
    max_tokens: int,
    max_length: int,
    stop_token_ids: Sequence[int] = (),
    temperature: float = 1.0,
    progress: bool = True,
    variants: Sequence[str] = VARIANTS,
    extra_prompts: Sequence[str] = (),
    extra_labels: Sequence[str] = (),
    launch_ratio: float = 1.25,
) -> dict[str, Any]:
    """Warm up, then run each variant on the same prompts; returns the report (``meta`` filled in by the caller).

    ``tail_batching`` launches ceil(``launch_ratio`` B) prompts: ``prompts`` (B of them), then ``extra_prompts``.
    """
    import ray

    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"--max-tokens={max_tokens!r} is not a positive int")
    unknown = [v for v in variants if v not in ALL_VARIANTS]
    if unknown:
        raise ValueError(f"variants {unknown} are unknown; choose from {list(ALL_VARIANTS)}")
    plans = variant_plans(n)
    launched = launch_count(launch_ratio, len(prompts))
    if TAIL_BATCHING in variants and len(prompts) + len(extra_prompts) < launched:
        raise ValueError(
            f"tail_batching launches ceil({launch_ratio} x {len(prompts)}) = {launched} prompts but only "
            f"{len(prompts) + len(extra_prompts)} were given; pass {launched - len(prompts)} extra prompts"
        )
    sampling_params = rollout_sampling_params(max_tokens, temperature, stop_token_ids)
    warmup = rollout_sampling_params(8, temperature)
    ray.get(engine.generate_responses.remote("warm up", "", warmup, max_length, tokenizer, num_samples=2))

    limits = engine_limits(engine)
    prompt_lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    report: dict[str, Any] = {"meta": {}, "engine": limits, "variants": {}}
    for name in variants:
        if name == TAIL_BATCHING:
            report["variants"][name] = _tail_report(
                engine, [*prompts, *extra_prompts][:launched], [*labels, *extra_labels][:launched], len(prompts),
                sampling_params, tokenizer, n, max_tokens, max_length, progress, limits, launch_ratio,
            )  # fmt: skip
            continue
        candidates = candidates_per_prompt(name, n)
        run = run_variant(
            engine, name, plans[name], prompts, labels, sampling_params, tokenizer, n, max_length, progress
        )
        stats = summarize(run, n, shortest_only=plans[name] is not None and plans[name].shortest_only)
        requests = candidates * len(prompts)
        blocks = blocks_needed(prompt_lengths, candidates, max_tokens, limits["block_size"])
        stats["all_admitted"] = requests <= limits["max_num_seqs"] and blocks <= limits["num_kv_blocks"]
        stats["kv_blocks_needed_upper_bound"] = blocks
        plan = plans[name]
        report["variants"][name] = {
            "plan": {"num_candidates": candidates, "num_keep": n, "num_long": 0 if plan is None else plan.num_long},
            "path": "generate_responses" if plan is None else "generate_group",
            "stats": stats,
            "groups": run["groups"],
        }
    if "baseline" in report["variants"]:
        report["ratios_vs_baseline"] = ratios_vs_baseline({k: v["stats"] for k, v in report["variants"].items()})
    return report


def _tail_report(
    engine, prompts, labels, batch, sampling_params, tokenizer, n, max_tokens, max_length, progress, limits, ratio
) -> dict[str, Any]:
    run = run_tail_variant(engine, prompts, labels, batch, sampling_params, tokenizer, n, max_length, progress)
    stats = summarize(run, n, shortest_only=False, batch=batch)
    prompt_lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    blocks = blocks_needed(prompt_lengths, n, max_tokens, limits["block_size"])
    stats["all_admitted"] = n * len(prompts) <= limits["max_num_seqs"] and blocks <= limits["num_kv_blocks"]
    stats["kv_blocks_needed_upper_bound"] = blocks
    return {
        "plan": {"num_candidates": n, "num_keep": n, "num_long": 0, "launch_ratio": ratio},
        "path": "generate_tail_group",
        "stats": stats,
        "groups": run["groups"],
        "kept_prompts": run["kept_prompts"],
    }


# ---- CLI ---------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m openrlhf_darts.bench.rollout", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny, smollm2 or a local Hugging Face model folder")
    parser.add_argument("--task", default="builtin", help=TASK_FLAG_HELP + "; ignored with --prompts")
    parser.add_argument("--prompts", default=None, help="JSONL file with a 'prompt' field per line (used verbatim)")
    parser.add_argument("--n", type=int, default=8, help="samples kept per prompt (n_samples_per_prompt)")
    parser.add_argument("--num-prompts", type=int, default=16, help="prompts in the batch")
    parser.add_argument("--max-tokens", type=int, default=128, help="response length cap")
    parser.add_argument("--out", default="runs/bench_rollout", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="problem generator and engine seed")
    parser.add_argument(
        "--variants", nargs="+", default=list(ALL_VARIANTS), choices=ALL_VARIANTS, help="variants to run, in order"
    )
    parser.add_argument(
        "--tail-launch-ratio", type=float, default=1.25, help="tail_batching: launch ceil(r x --num-prompts) prompts"
    )
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument(
        "--extra-stop-tokens",
        type=int,
        default=None,
        help=f"ordinary tokens added as stop tokens (default {TINY_STOP_TOKENS} for tiny, 0 otherwise)",
    )
    return parser


def check_args(args: argparse.Namespace) -> None:
    variant_plans(args.n)
    if TAIL_BATCHING in args.variants:
        launch_count(args.tail_launch_ratio, max(1, args.num_prompts))  # r >= 1
    for flag, value in (("--num-prompts", args.num_prompts), ("--max-tokens", args.max_tokens)):
        if value < 1:
            raise ValueError(f"{flag}={value} is not positive; pass at least 1")
    if args.extra_stop_tokens is not None and args.extra_stop_tokens < 0:
        raise ValueError(f"--extra-stop-tokens={args.extra_stop_tokens} is negative; pass 0 or more")
    if not 0.0 < args.temperature:
        raise ValueError(f"--temperature={args.temperature} is not positive; DARTS needs sampled candidates (use 1.0)")
    if args.prompts is not None and not Path(args.prompts).is_file():
        raise ValueError(f"--prompts {args.prompts} is not a file; pass a JSONL file or leave it out")
    if args.prompts is not None and args.task != BUILTIN:
        raise ValueError(f"--task={args.task} and --prompts {args.prompts} both choose the prompts; pass one of them")
    check_task(args.task)


def prepare(args: argparse.Namespace):
    """Model folder, tokenizer, prompts/labels, stop tokens and engine sizes for a CLI run (no engine yet).

    The prompts are every prompt the run launches: ``--num-prompts`` shared by all variants, then, with
    ``tail_batching``, the extra ones it launches (the next ones of the same task or file).
    """
    from transformers import AutoTokenizer

    from openrlhf_darts.models import resolve_model

    model_path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    batch = args.num_prompts
    launched = launch_count(args.tail_launch_ratio, batch) if TAIL_BATCHING in args.variants else batch
    if args.prompts:
        prompts, labels = load_prompts(args.prompts)
        if len(prompts) < launched:
            raise ValueError(
                f"--prompts {args.prompts} holds {len(prompts)} prompts; tail_batching launches {launched} "
                f"(ceil({args.tail_launch_ratio} x {batch})): add prompts, or leave tail_batching out of --variants"
            )
        prompts, labels = prompts[:launched], labels[:launched]
        source = f"file {args.prompts} (verbatim)"
    elif args.task == BUILTIN:
        prompts, labels = builtin_prompts(tokenizer, launched, args.seed)  # the first B do not depend on the count
        source = "built-in arithmetic word problems (openrlhf_darts.bench.tasks), chat template applied"
    else:
        prompts, labels = task_prompts(tokenizer, args.task, batch, args.seed)
        if launched > batch:
            # A reasoning-gym dataset's entries depend on its size: the shared B come from a dataset of size B (as
            # without the tail arm), the extra ones from one of the launched size.
            more, more_labels = task_prompts(tokenizer, args.task, launched, args.seed)
            prompts, labels = prompts + more[batch:], labels + more_labels[batch:]
        source = (
            f"reasoning-gym {args.task} (reasoning-gym=={REASONING_GYM_VERSION}, seed {args.seed}, default config, "
            f"system prompt {SYSTEM_PROMPT_NAME!r}), chat template applied"
        )
    count = args.extra_stop_tokens
    if count is None:
        count = TINY_STOP_TOKENS if args.model == "tiny" else 0
    stop_ids = stop_token_ids(len(tokenizer), count)
    prompt_lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    max_model_len = 64 * math.ceil((max(prompt_lengths) + args.max_tokens) / 64)
    config = json.loads((Path(model_path) / "config.json").read_text())
    if max_model_len > config.get("max_position_embeddings", max_model_len):
        raise ValueError(
            f"longest prompt ({max(prompt_lengths)} tokens) + --max-tokens={args.max_tokens} exceeds the model's "
            f"{config['max_position_embeddings']} positions; lower --max-tokens"
        )
    most = max(candidates_per_prompt(v, args.n) for v in VARIANTS)
    blocks = blocks_needed(prompt_lengths[:batch], most, args.max_tokens, CPU_BLOCK_SIZE)
    if launched > batch:  # tail batching runs n per launched prompt
        blocks = max(blocks, blocks_needed(prompt_lengths, args.n, args.max_tokens, CPU_BLOCK_SIZE))
    kv_bytes = kv_bytes_per_token(model_path) * CPU_BLOCK_SIZE * blocks
    env = {
        settings.KV_CACHE_BYTES_ENV: str(max(MIN_KV_CACHE_BYTES, int(1.1 * kv_bytes))),
        settings.MAX_NUM_SEQS_ENV: str(max(128, most * batch, args.n * launched)),
    }
    meta = {
        "model": args.model,
        "model_path": model_path,
        "task": "file" if args.prompts else args.task,
        "n": args.n,
        "num_prompts": batch,
        "variants": list(args.variants),
        "tail_launch_ratio": args.tail_launch_ratio if launched > batch else None,
        "tail_prompts_launched": launched if TAIL_BATCHING in args.variants else None,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
        "prompts": source,
        "prompt_tokens_mean": statistics.fmean(prompt_lengths),
        "extra_stop_token_ids": len(stop_ids),
        "extra_stop_note": (
            f"{len(stop_ids)} ordinary tokens were added as stop tokens to every request of every variant, so the "
            "random tiny model stops at varied lengths"
            if stop_ids
            else "none"
        ),
        "engine_iterations_definition": "engine steps that sampled a token during the variant, counted by vLLM in "
        "the engine actor (vllm:iteration_tokens_total)",
        "longest_request_definition": "largest number of tokens any request of the batch decoded (aborted: partial); "
        "equals the engine iterations only when all requests are admitted at once (all_admitted)",
        "oracle_definition": "max over prompts of: max candidate length (baseline, dual_end) or the n-th shortest "
        "valid length (shortest_only); tail_batching: max over its kept groups of their max length",
        "engine_env": env,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "load_average_1m_at_start": os.getloadavg()[0],
        # Ray starts workers (the engine actor and its vLLM process) at niceness 15 unless this says otherwise.
        "ray_worker_niceness": os.environ.get("RAY_worker_niceness", "15 (Ray's default)"),
    }
    return model_path, tokenizer, prompts, labels, stop_ids, max_model_len, env, meta


def run_from_args(args: argparse.Namespace, repeats: int = 1, before=None) -> list[dict[str, Any]]:
    """Check the CLI arguments, start Ray and one engine, run the benchmark ``repeats`` times on it; one report each.

    ``before(engine, context)``, when given, runs on the engine first with ``context`` = {meta, tokenizer, prompts,
    labels, n, max_length} (validate_sim measures there, under the same conditions as the benchmark). Outputs are
    written for the first report and its table is printed.
    """
    check_args(args)
    model_path, tokenizer, prompts, labels, stop_ids, max_model_len, env, meta = prepare(args)
    import ray

    batch = args.num_prompts
    prompts, labels, extra_prompts, extra_labels = prompts[:batch], labels[:batch], prompts[batch:], labels[batch:]
    if args.prompts:
        reward = REWARD_FILE if any(labels) else None
        meta["reward"] = "exact answer (openrlhf_darts.bench.tasks.reward_func)" if reward else "none"
    else:
        reward = reward_file(args.task)
        meta["reward"] = (
            "exact answer (openrlhf_darts.bench.tasks.reward_func)"
            if args.task == BUILTIN
            else f"reasoning-gym {args.task} score_answer on the last <answer> tag (openrlhf_darts.bench.gym_tasks)"
        )
    init_ray(env)
    reports = []
    try:
        engine = create_engine(model_path, args.seed, max_model_len, remote_rm_url=reward)
        if before is not None:
            context = dict(meta=meta, tokenizer=tokenizer, prompts=prompts, labels=labels, n=args.n)
            before(engine, dict(context, max_length=max_model_len))
        for _ in range(repeats):
            reports.append(
                run_benchmark(
                    engine, tokenizer, prompts, labels, args.n, args.max_tokens, max_model_len, stop_ids,
                    args.temperature, variants=args.variants, extra_prompts=extra_prompts, extra_labels=extra_labels,
                    launch_ratio=args.tail_launch_ratio,
                )  # fmt: skip
            )
            reports[-1]["meta"] = dict(meta, load_average_1m_at_end=os.getloadavg()[0])
    finally:
        ray.shutdown()
    paths = write_outputs(reports[0], args.out)
    print(format_table(reports[0]))
    print(f"\nwrote {paths['json']}, {paths['png']}, {paths['table']}")
    return reports


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run_from_args(build_parser().parse_args(argv))[0]


if __name__ == "__main__":
    main()


if __name__ == "__main__":
    main()
