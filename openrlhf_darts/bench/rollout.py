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

**Engine iterations**: the engine steps that sampled a token while the variant ran, counted by vLLM itself in the
engine actor (`rollout/engine_counters.py`). This is how many decode steps the rollout took, whatever the engine admits
at once.
**Longest request**: the largest number of tokens any request of the batch decoded, aborted candidates counted at their
partial length. It equals the engine iterations only when every request is admitted at once and all start in the same
step (``all_admitted`` compares the requests and their KV blocks with the engine's ``max_num_seqs`` and KV cache);
otherwise the engine needs more iterations than that.
**Oracle longest request**: the longest request the batch would have needed given the recorded candidate lengths: per
prompt, the max length for ``baseline`` and ``dual_end``, and the n-th shortest valid length for ``shortest_only`` (the
max when fewer than n are valid); the batch's oracle is the largest over its prompts; for ``tail_batching`` the
largest over its B kept groups (the B-th completion). Longest minus oracle is the abort latency.

**Tiny model.** Its weights are random and it rarely emits EOS, so by default 16 ordinary tokens are added as extra
stop tokens (``--extra-stop-tokens``; ``stop_token_ids`` in every request of every variant) to get a realistic spread
of lengths; the output records this. Real models (``smollm2``, a folder) use none by default.

**Generated tokens** are counted twice: from the recorded lengths (``tokens_generated``) and by vLLM itself
(``engine_tokens_generated``, its ``vllm:generation_tokens`` counter over the variant); the two are equal when every
token the engine produced is in a recorded length (tests/contract/test_bench.py checks it).

Writes ``report.json`` (figures plus every prompt's candidate lengths, truncation and abort flags per variant, so
``python -m openrlhf_darts.sim`` can replay them), ``lengths.png`` and ``table.txt`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from openrlhf_darts.backends.cpu import settings
from openrlhf_darts.bench.gym_tasks import REASONING_GYM_VERSION, SYSTEM_PROMPT_NAME
from openrlhf_darts.bench.tasks import BUILTIN, TASK_FLAG_HELP, check_task, reward_file
from openrlhf_darts.core.percentile import nearest_rank
from openrlhf_darts.core.tail_batching import launch_count
from openrlhf_darts.core.types import GroupOutcome, GroupPlan

VARIANTS = ("baseline", "shortest_only", "dual_end")
TAIL_BATCHING = "tail_batching"  # the comparison arm: more prompts launched, the first B groups kept
ALL_VARIANTS = (*VARIANTS, TAIL_BATCHING)
TINY_EXTRA_STOP_TOKENS = 16
CPU_BLOCK_SIZE = 128  # vLLM's CPU backend default KV block size (vllm/platforms/cpu.py)
MIN_KV_CACHE_BYTES = 256 * 2**20
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
    prompts, labels = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number} is not valid JSON ({e}); expected one object per line") from e
            if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
                raise ValueError(f'{path}:{number} has no string \'prompt\' field; expected {{"prompt": "..."}}')
            prompts.append(item["prompt"])
            labels.append(str(item.get("label", item.get("answer", ""))))
    if not prompts:
        raise ValueError(f"--prompts {path} holds no prompt; expected one JSON object with a 'prompt' field per line")
    return prompts, labels


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


def extra_stop_token_ids(tokenizer, count: int) -> list[int]:
    """The ``count`` last ordinary token ids as extra stop tokens (tests/contract/conftest.py ``stop_token_ids``)."""
    return list(range(len(tokenizer) - count, len(tokenizer))) if count > 0 else []


def kv_bytes_per_token(model_path: str) -> int:
    """fp32 KV cache bytes one token takes: 2 (K, V) x layers x KV heads x head dim x 4."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return 2 * config["num_hidden_layers"] * config.get("num_key_value_heads", heads) * head_dim * 4


def blocks_needed(prompt_lengths: Sequence[int], candidates: int, max_tokens: int, block_size: int) -> int:
    """KV blocks if every candidate reaches the cap, without counting prefix sharing (an upper bound)."""
    return sum(candidates * math.ceil((p + max_tokens) / block_size) for p in prompt_lengths)


# ---- engine ------------------------------------------------------------------------------------------------------
def init_ray(env_vars: dict[str, str] | None = None) -> None:
    """A local Ray cluster with one logical GPU (engines ask for GPU bundles; nothing touches CUDA on CPU)."""
    import ray

    from openrlhf_darts import compat

    ray.init(
        num_cpus=max(2, os.cpu_count() or 2),
        num_gpus=1,
        runtime_env=compat.ray_runtime_env({"env_vars": dict(env_vars or {})}),
        include_dashboard=False,
        log_to_driver=False,
    )


def create_engine(
    model_path: str,
    seed: int,
    max_model_len: int,
    remote_rm_url: str | None = None,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.15,
    enforce_eager: bool = True,
):
    """One DARTS engine actor through OpenRLHF's ``create_vllm_engines`` (prefix caching on); returns it once up."""
    import ray

    from openrlhf_darts import upstream
    from openrlhf_darts.rollout.rollout_actor import DartsRolloutRayActor

    with upstream.rollout_actor_class(DartsRolloutRayActor):
        engines = upstream.create_vllm_engines(
            1, tensor_parallel_size, model_path, seed, False, True, enforce_eager, max_model_len, None,
            gpu_memory_utilization, False, None, remote_rm_url=remote_rm_url,
        )  # fmt: skip
    ray.get(engines[0].get_num_unfinished_requests.remote())
    return engines[0]


def rollout_sampling_params(max_tokens: int, temperature: float = 1.0, stop_token_ids: Sequence[int] = ()):
    """The sampling parameters of a training rollout (the samples generator's builder,
    `upstream.rollout_sampling_params`, importance correction off), plus the benchmark's extra stop tokens."""
    from types import SimpleNamespace as NS

    from openrlhf_darts import upstream

    args = NS(algo=NS(advantage=NS(is_correction_level="off")))
    extra = {"stop_token_ids": list(stop_token_ids)} if stop_token_ids else {}
    generate_kwargs = {"temperature": temperature, "top_p": 1.0, "max_new_tokens": max_tokens}
    return upstream.rollout_sampling_params(args, generate_kwargs, **extra)


def engine_limits(engine) -> dict[str, int]:
    """max_num_seqs, KV block size and KV blocks of the running engine (read from its vLLM config)."""
    import ray

    def read(actor) -> dict[str, int]:
        from openrlhf_darts import upstream

        config = upstream.engine_vllm_config(actor)
        return {
            "max_num_seqs": int(config.scheduler_config.max_num_seqs),
            "max_num_batched_tokens": int(config.scheduler_config.max_num_batched_tokens),
            "block_size": int(config.cache_config.block_size),
            "num_kv_blocks": int(config.cache_config.num_gpu_blocks or 0),
        }

    return ray.get(engine.__ray_call__.remote(read))


def engine_counters(engine) -> dict[str, float]:
    """vLLM's own Prometheus counters in the engine actor's process, summed over labels: `generation_tokens` (every
    token the front end received for a request, aborted ones included, up to the abort) and `finished_<reason>`
    (requests the engine finished by stop / length / ...; a request the front end aborted is not counted there)."""
    import ray

    def read(actor) -> dict[str, float]:
        from vllm.v1.metrics.reader import Counter, get_metrics_snapshot

        totals = {"generation_tokens": 0.0}
        for metric in get_metrics_snapshot():
            if isinstance(metric, Counter) and metric.name == "vllm:generation_tokens":
                totals["generation_tokens"] += metric.value
            elif isinstance(metric, Counter) and metric.name == "vllm:request_success":
                key = f"finished_{metric.labels['finished_reason']}"
                totals[key] = totals.get(key, 0.0) + metric.value
        return totals

    return ray.get(engine.__ray_call__.remote(read))


# ---- one variant -------------------------------------------------------------------------------------------------
def _response_length(response: dict) -> int:
    start, end = response["action_ranges"][0]
    return end - start


def run_variant(
    engine,
    name: str,
    plan: GroupPlan | None,
    prompts: Sequence[str],
    labels: Sequence[str],
    sampling_params,
    tokenizer,
    n: int,
    max_length: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Dispatch every prompt at once (one Ray call each) and wait for all; returns per-prompt groups, wall time and
    the engine's iterations during the variant.

    Each group is ``{"lengths", "truncated", "aborted", "kept", "rewards"}`` in candidate-index order; the baseline's
    lengths come from its responses, DARTS lengths from ``pop_group_outcomes()`` (checked against the kept responses).
    """
    import ray
    from tqdm import tqdm

    if plan is not None:
        stale = ray.get(engine.pop_group_outcomes.remote())
        if stale:
            raise RuntimeError(f"engine holds {len(stale)} group outcomes from an earlier call; pop them first")
    ray.get(engine.reset_prefix_cache.remote())
    iterations_before = ray.get(engine.engine_iterations.remote())
    counted = engine_counters(engine)["generation_tokens"]
    start = time.perf_counter()
    refs = []
    for index, (prompt, label) in enumerate(zip(prompts, labels, strict=True)):
        common = dict(prompt=prompt, label=label, sampling_params=sampling_params, max_length=max_length)
        if plan is None:
            ref = engine.generate_responses.remote(**common, hf_tokenizer=tokenizer, num_samples=n)
        else:
            ref = engine.generate_group.remote(**common, hf_tokenizer=tokenizer, plan=plan, group_id=index)
        refs.append(ref)
    position = {ref: i for i, ref in enumerate(refs)}
    responses: list[list[dict] | None] = [None] * len(refs)
    pending = list(refs)
    with tqdm(total=len(refs), desc=f"{name:>13}", unit="prompt", disable=not progress, file=sys.stderr) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=10.0)
            for ref in ready:
                responses[position[ref]] = ray.get(ref)
                bar.update(1)
    wall_s = time.perf_counter() - start
    engine_iterations = ray.get(engine.engine_iterations.remote()) - iterations_before
    if ray.get(engine.get_num_unfinished_requests.remote()) != 0:
        raise RuntimeError(f"variant {name} left unfinished requests in the engine")
    counted = engine_counters(engine)["generation_tokens"] - counted

    groups = []
    if plan is None:
        for i, group in enumerate(responses):
            if len(group) != n:
                raise RuntimeError(f"baseline returned {len(group)} responses for prompt {i}; expected n={n}")
            groups.append(
                {
                    "lengths": [_response_length(r) for r in group],
                    "truncated": [bool(r["truncated"]) for r in group],
                    "aborted": [False] * n,
                    "kept": list(range(n)),
                    "rewards": [_reward(r) for r in group],
                }
            )
    else:
        records = sorted(ray.get(engine.pop_group_outcomes.remote()), key=lambda r: r["group_id"])
        if [r["group_id"] for r in records] != list(range(len(prompts))):
            raise RuntimeError(f"variant {name}: outcomes for groups {[r['group_id'] for r in records]}, expected all")
        for i, (record, group) in enumerate(zip(records, responses)):
            outcome = GroupOutcome.from_dict(record["outcome"])
            if len(group) != n or [_response_length(r) for r in group] != list(outcome.kept_lengths):
                raise RuntimeError(f"variant {name}, prompt {i}: kept responses disagree with the group outcome")
            groups.append(
                {
                    "lengths": list(outcome.lengths),
                    "truncated": list(outcome.truncated),
                    "aborted": list(outcome.aborted),
                    "kept": list(outcome.kept),
                    "rewards": [_reward(r) for r in group],
                }
            )
    return {
        "wall_s": wall_s,
        "engine_iterations": engine_iterations,
        "groups": groups,
        "engine_tokens_generated": int(counted),
    }


def run_tail_variant(
    engine,
    prompts: Sequence[str],
    labels: Sequence[str],
    batch: int,
    sampling_params,
    tokenizer,
    n: int,
    max_length: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Tail batching for one step: launch every prompt (one ``generate_tail_group`` each), keep the first ``batch``
    groups to complete, abort the rest on the engine; returns per-prompt groups (aborted ones keep nothing), the kept
    prompts in completion order and the wall time until the abort returned."""
    import ray
    from tqdm import tqdm

    ray.get(engine.reset_prefix_cache.remote())
    iterations_before = ray.get(engine.engine_iterations.remote())
    counted = engine_counters(engine)["generation_tokens"]
    start = time.perf_counter()
    refs = [
        engine.generate_tail_group.remote(
            group_id=i, prompt=prompt, label=label, sampling_params=sampling_params, max_length=max_length,
            hf_tokenizer=tokenizer, num_samples=n,
        )
        for i, (prompt, label) in enumerate(zip(prompts, labels, strict=True))
    ]  # fmt: skip
    position = {ref: i for i, ref in enumerate(refs)}
    records: list[dict | None] = [None] * len(refs)
    kept, pending = [], list(refs)
    with tqdm(total=batch, desc=f"{TAIL_BATCHING:>13}", unit="prompt", disable=not progress, file=sys.stderr) as bar:
        while len(kept) < batch:
            ready, pending = ray.wait(pending, num_returns=1)
            kept.append(position[ready[0]])
            records[kept[-1]] = ray.get(ready[0])
            bar.update(1)
    ray.get(engine.abort_tail_groups.remote([position[ref] for ref in pending]))
    wall_s = time.perf_counter() - start
    engine_iterations = ray.get(engine.engine_iterations.remote()) - iterations_before
    for ref in pending:
        records[position[ref]] = ray.get(ref)
    if ray.get(engine.get_num_unfinished_requests.remote()) != 0:
        raise RuntimeError("variant tail_batching left unfinished requests in the engine")
    counted = engine_counters(engine)["generation_tokens"] - counted
    groups = []
    for i, record in enumerate(records):
        if i in kept:
            responses = record["responses"]
            if [_response_length(r) for r in responses] != record["lengths"]:
                raise RuntimeError(f"tail_batching, prompt {i}: responses disagree with the engine's token counts")
            groups.append(
                {
                    "lengths": list(record["lengths"]),
                    "truncated": list(record["truncated"]),
                    "aborted": [False] * n,
                    "kept": list(range(n)),
                    "rewards": [_reward(r) for r in responses],
                }
            )
        else:  # aborted, or completed while its abort was on the way: not kept either way
            groups.append(
                {
                    "lengths": list(record["lengths"]),
                    "truncated": list(record["truncated"]),
                    "aborted": list(record["cut"]),
                    "kept": [],
                    "rewards": [],
                }
            )
    return {
        "wall_s": wall_s,
        "engine_iterations": engine_iterations,
        "groups": groups,
        "kept_prompts": kept,
        "engine_tokens_generated": int(counted),
    }


def _reward(response: dict) -> float | None:
    reward = response.get("reward")
    if reward is None:
        return None
    return float(reward.flatten()[0]) if hasattr(reward, "flatten") else float(reward)


# ---- figures -----------------------------------------------------------------------------------------------------
def length_summary(values: Sequence[int]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "p50": nearest_rank(values, 50),
        "p90": nearest_rank(values, 90),
        "max": float(max(values)),
    }


def prompt_oracle(group: dict, n: int, shortest_only: bool) -> int:
    """Earliest decode step the prompt could be done given its candidates' lengths (module docstring)."""
    if not shortest_only:
        return max(group["lengths"])
    valid = sorted(
        length for length, cut, ab in zip(group["lengths"], group["truncated"], group["aborted"]) if not (cut or ab)
    )
    return valid[n - 1] if len(valid) >= n else max(group["lengths"])


def summarize(run: dict[str, Any], n: int, shortest_only: bool, batch: int | None = None) -> dict[str, Any]:
    """The per-variant figures of the table from one ``run_variant`` result (``run_tail_variant``: pass ``batch``,
    the number of prompts it keeps; per-prompt figures then cover the kept groups)."""
    groups = run["groups"]
    all_lengths = [length for g in groups for length in g["lengths"]]
    kept_lengths = [g["lengths"][j] for g in groups for j in g["kept"]]
    for i, g in enumerate(groups):
        if len(g["kept"]) not in ((n,) if batch is None else (0, n)):
            raise RuntimeError(f"prompt {i} kept {len(g['kept'])} candidates; expected exactly n={n}")
    trained = [g for g in groups if g["kept"]]
    if len(trained) != (len(groups) if batch is None else batch):
        raise RuntimeError(f"{len(trained)} of {len(groups)} prompts kept their group; expected {batch}")
    generated, kept = sum(all_lengths), sum(kept_lengths)
    oracles = [prompt_oracle(g, n, shortest_only) for g in trained]
    rewards = [r for g in groups for r in g["rewards"] if r is not None]

    def ratio(lengths: Sequence[int]) -> float:
        median = statistics.median(lengths)
        return max(lengths) / median if median > 0 else float("nan")

    return {
        "candidates": len(all_lengths),
        "wall_s": run["wall_s"],
        "engine_iterations": run["engine_iterations"],
        "longest_request": max(all_lengths),
        "oracle_longest_request": max(oracles),
        "tokens_generated": generated,
        "tokens_kept": kept,
        "tokens_wasted": generated - kept,
        # vLLM's own count of the tokens it generated for this variant (vllm:generation_tokens); equals
        # tokens_generated when the recorded lengths are right (aborted candidates at their partial length).
        "engine_tokens_generated": run["engine_tokens_generated"],
        "tokens_per_s": generated / run["wall_s"] if run["wall_s"] > 0 else float("nan"),
        "kept_length": length_summary(kept_lengths),
        "all_length": length_summary(all_lengths),
        "max_median_ratio_all": statistics.fmean(ratio(g["lengths"]) for g in trained),
        "max_median_ratio_kept": statistics.fmean(ratio([g["lengths"][j] for j in g["kept"]]) for g in trained),
        "aborted": sum(sum(g["aborted"]) for g in groups),
        # Groups with fewer than n untruncated finishes: the fill branch of §3(b) ran, and no early stop was possible.
        "underfilled_groups": sum(
            sum(not (cut or ab) for cut, ab in zip(g["truncated"], g["aborted"])) < n for g in trained
        ),
        "prompts_launched": len(groups),
        "prompts_kept": len(trained),
        "truncated": sum(sum(g["truncated"]) for g in groups),
        "kept_reward_mean": statistics.fmean(rewards) if rewards else None,
        "prompt_oracle_steps": oracles,
    }


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


def ratios_vs_baseline(stats: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each variant's figures over the baseline's (`stats` maps variant name -> `summarize` result)."""
    base = stats["baseline"]
    return {
        name: {
            "engine_iterations": s["engine_iterations"] / base["engine_iterations"],
            "longest_request": s["longest_request"] / base["longest_request"],
            "oracle_longest_request": s["oracle_longest_request"] / base["oracle_longest_request"],
            "wall_s": s["wall_s"] / base["wall_s"],
            "tokens_generated": s["tokens_generated"] / base["tokens_generated"],
            "kept_length_mean": s["kept_length"]["mean"] / base["kept_length"]["mean"],
        }
        for name, s in stats.items()
    }


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


def format_table(report: dict[str, Any]) -> str:
    """The comparison table, metrics as rows and variants as columns."""
    names = list(report["variants"])
    stats = {name: report["variants"][name]["stats"] for name in names}
    plans = {name: report["variants"][name]["plan"] for name in names}
    ratios = report.get("ratios_vs_baseline", {})

    width = 19  # fits "1234/1234/1234/1234" with a gap

    def row(label: str, values: list[str]) -> str:
        return f"{label:<34}" + "".join(f"{v:>{width}}" for v in values)

    def lengths(key: str) -> list[str]:
        return [
            "{mean:.0f}/{p50:.0f}/{p90:.0f}/{max:.0f}".format(**stats[name][key]) for name in names
        ]  # fmt: skip

    lines = [row("metric", names), "-" * (34 + width * len(names))]
    lines.append(
        row("candidates / kept per prompt", [f"{plans[m]['num_candidates']}/{plans[m]['num_keep']}" for m in names])
    )
    lines.append(row("num_long (L)", [str(plans[m]["num_long"]) for m in names]))
    lines.append(
        row("prompts launched / kept", [f"{stats[m]['prompts_launched']}/{stats[m]['prompts_kept']}" for m in names])
    )
    lines.append(row("wall time (s)", [f"{stats[m]['wall_s']:.2f}" for m in names]))
    lines.append(row("engine iterations (vLLM's count)", [str(stats[m]["engine_iterations"]) for m in names]))
    if ratios:
        lines.append(row("  ratio vs baseline", [f"{ratios[m]['engine_iterations']:.3f}" for m in names]))
    lines.append(row("longest request (tokens)", [str(stats[m]["longest_request"]) for m in names]))
    lines.append(row("oracle longest request (tokens)", [str(stats[m]["oracle_longest_request"]) for m in names]))
    lines.append(row("all requests admitted at once", ["yes" if stats[m]["all_admitted"] else "NO" for m in names]))
    lines.append(row("tokens generated", [str(stats[m]["tokens_generated"]) for m in names]))
    lines.append(row("tokens kept", [str(stats[m]["tokens_kept"]) for m in names]))
    lines.append(row("tokens wasted", [str(stats[m]["tokens_wasted"]) for m in names]))
    lines.append(row("tokens / s", [f"{stats[m]['tokens_per_s']:.0f}" for m in names]))
    lines.append(row("kept length mean/p50/p90/max", lengths("kept_length")))
    lines.append(row("all length mean/p50/p90/max", lengths("all_length")))
    lines.append(row("per-prompt max/median, all", [f"{stats[m]['max_median_ratio_all']:.2f}" for m in names]))
    lines.append(row("per-prompt max/median, kept", [f"{stats[m]['max_median_ratio_kept']:.2f}" for m in names]))
    lines.append(
        row("aborted / truncated candidates", [f"{stats[m]['aborted']}/{stats[m]['truncated']}" for m in names])
    )
    lines.append(row("groups with < n untruncated", [str(stats[m]["underfilled_groups"]) for m in names]))
    rewards = [stats[m]["kept_reward_mean"] for m in names]
    lines.append(row("kept reward mean", ["-" if r is None else f"{r:.3f}" for r in rewards]))
    return "\n".join(lines)


def plot_lengths(report: dict[str, Any], path: str | os.PathLike) -> None:
    """Histograms of kept vs all candidate lengths, one panel per variant (aborted candidates at partial length)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["variants"])
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), sharex=True, squeeze=False)
    top = max(length for v in report["variants"].values() for g in v["groups"] for length in g["lengths"])
    bins = max(5, min(40, top // 4 or 1))
    for ax, name in zip(axes[0], names):
        groups = report["variants"][name]["groups"]
        all_lengths = [length for g in groups for length in g["lengths"]]
        kept = [g["lengths"][j] for g in groups for j in g["kept"]]
        ax.hist(all_lengths, bins=bins, range=(0, top), alpha=0.5, label=f"all ({len(all_lengths)})")
        ax.hist(kept, bins=bins, range=(0, top), alpha=0.7, label=f"kept ({len(kept)})")
        stats = report["variants"][name]["stats"]
        ax.axvline(stats["longest_request"], color="k", linestyle="--", linewidth=1, label="longest request")
        ax.set_title(f"{name}: {report['variants'][name]['plan']['num_candidates']} cand./prompt")
        ax.set_xlabel("response length (tokens)")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("candidates")
    meta = report["meta"]
    task = f", task={meta['task']}" if "task" in meta else ""
    fig.suptitle(f"rollout lengths, model={meta.get('model', '?')}{task}, n={meta.get('n', '?')}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(report: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, str]:
    """report.json, lengths.png and table.txt under ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "png": out / "lengths.png", "table": out / "table.txt"}
    paths["json"].write_text(json.dumps(report, indent=1) + "\n")
    plot_lengths(report, paths["png"])
    paths["table"].write_text(format_table(report) + "\n")
    return {key: str(path) for key, path in paths.items()}


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
        help=f"ordinary tokens added as stop tokens (default {TINY_EXTRA_STOP_TOKENS} for tiny, 0 otherwise)",
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
        count = TINY_EXTRA_STOP_TOKENS if args.model == "tiny" else 0
    stop_ids = extra_stop_token_ids(tokenizer, count)
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
