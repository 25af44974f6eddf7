"""One DARTS engine for the benchmarks, and the rollout variants dispatched on it (`bench.rollout` runs them).

- **Start:** `init_ray` (a local Ray cluster with one logical GPU) and `create_engine` (one `DartsRolloutRayActor`
  through OpenRLHF's own `create_vllm_engines`, prefix caching on); `engine_limits` reads the running engine's
  `max_num_seqs` and KV cache; `kv_bytes_per_token` and `blocks_needed` size the KV cache beforehand.
- **Dispatch:** `run_variant` (the baseline's `generate_responses`, or `generate_group` with a plan) and
  `run_tail_variant` (tail batching: `generate_tail_group` per prompt, the first B groups kept, the rest aborted)
  send every prompt at once, one Ray call each, as the samples generators do, and return per-prompt groups, the wall
  time, the engine's iterations and vLLM's count of generated tokens (`rollout/engine_counters.py`).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openrlhf_darts.core.types import GroupOutcome, GroupPlan

CPU_BLOCK_SIZE = 128  # vLLM's CPU backend default KV block size (vllm/platforms/cpu.py)
MIN_KV_CACHE_BYTES = 256 * 2**20


# ---- engine ------------------------------------------------------------------------------------------------------
def kv_bytes_per_token(model_path: str) -> int:
    """fp32 KV cache bytes one token takes: 2 (K, V) x layers x KV heads x head dim x 4."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return 2 * config["num_hidden_layers"] * config.get("num_key_value_heads", heads) * head_dim * 4


def blocks_needed(prompt_lengths: Sequence[int], candidates: int, max_tokens: int, block_size: int) -> int:
    """KV blocks if every candidate reaches the cap, without counting prefix sharing (an upper bound)."""
    return sum(candidates * math.ceil((p + max_tokens) / block_size) for p in prompt_lengths)


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

    from openrlhf_darts.rollout.engine_counters import engine_counters

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

    from openrlhf_darts.rollout.engine_counters import engine_counters

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
    with tqdm(total=batch, desc=f"{'tail_batching':>13}", unit="prompt", disable=not progress, file=sys.stderr) as bar:
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
