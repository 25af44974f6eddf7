"""Engine-side and generator-side doors: the rollout `SamplingParams` as upstream builds them, the engine actor's vLLM
`llm`, upstream's reward executor and its logger, the samples generator's dataloader iterator, the held-out
evaluation in one engine call, the prompt dataset.

Each reads or rebinds one upstream attribute listed in `contract.ATTRIBUTES` (or calls one listed in `CONTRACT`).
"""

from __future__ import annotations

import logging


def rollout_sampling_params(args, generate_kwargs: dict, **extra):
    """The `SamplingParams` upstream's `_dispatch_prompts_to_vllm` builds for a training rollout.

    Rebuilt here because upstream builds it inline; `tests/contract/test_upstream.py` compares the two field by field.
    `args` needs only `args.algo.advantage.is_correction_level`. `extra` adds fields upstream leaves at vLLM's
    defaults (the benchmarks' extra `stop_token_ids`); it cannot override one upstream sets.
    """
    from vllm import SamplingParams

    fields = dict(
        temperature=generate_kwargs.get("temperature", 1.0),
        top_p=generate_kwargs.get("top_p", 1.0),
        top_k=generate_kwargs.get("top_k", -1),
        max_tokens=generate_kwargs.get("max_new_tokens"),
        min_tokens=generate_kwargs.get("min_new_tokens", 1),
        skip_special_tokens=generate_kwargs.get("skip_special_tokens", False),
        logprobs=1 if args.algo.advantage.is_correction_level != "off" else None,
    )
    overlap = sorted(set(extra) & set(fields))
    if overlap:
        raise ValueError(
            f"rollout_sampling_params: {overlap} are set from generate_kwargs as upstream sets them; pass them there "
            "(temperature, top_p, top_k, max_new_tokens, min_new_tokens, skip_special_tokens), not as extra fields"
        )
    return SamplingParams(**fields, **extra)


def reward_file_executor(path: str):
    """Upstream's engine-side `SingleTurnAgentExecutor` for a reward file (it loads the file's `reward_func`)."""
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    if not str(path).endswith(".py"):
        raise ValueError(f"path={path!r} is not a .py file; upstream loads reward functions only from .py files")
    return SingleTurnAgentExecutor(remote_rm_url=str(path))


def score_like_engine(executor, queries: list[str], prompts: list[str], labels: list[str]) -> list[dict]:
    """Score samples exactly as an engine actor does: `executor.reward_func` called once per sample, concurrently, each
    from a worker thread (`_fetch_rewards_via_func`); one result dict per sample, exceptions propagate."""
    import asyncio

    return asyncio.run(executor._fetch_rewards_via_func(list(queries), list(prompts), list(labels)))


def training_dataloader_iter(generator):
    """The iterator upstream's `generate_samples` draws training prompts from (`SamplesGenerator._dataloader_iter`);
    None before the first training rollout and after the dataloader is exhausted, as upstream itself reads it."""
    return getattr(generator, "_dataloader_iter", None)


def eval_samples_in_one_call(generator, **generate_kwargs) -> list:
    """Every held-out prompt of `generator.eval_dataloader` sent to the engines in one call, as upstream's
    `generate_eval_samples` otherwise does it: `_generate_vllm` with the given generate kwargs, no dynamic filtering,
    the engines woken and put back to sleep under `--vllm.enable_sleep`. Upstream sends `--rollout.batch_size` prompts
    per call and waits for each call, so a held-out set of 64 at batch size 8 runs as 8 calls one after another (8 x
    the longest answer in engine iterations); here the engine batches them all. The samples are the same draws in
    distribution; only the engine's schedule changes. Raises RuntimeError if not every held-out prompt went out."""
    from openrlhf_darts.upstream.classes import batch_vllm_engine_call

    num_prompts = len(generator.eval_dataloader.dataset)
    sleep = generator.args.vllm.enable_sleep
    if sleep:
        batch_vllm_engine_call(generator.vllm_engines, "wake_up")
    try:
        experiences, consumed, _ = generator._generate_vllm(
            iter(generator.eval_dataloader), num_prompts, dynamic_filtering=False, **generate_kwargs
        )
    finally:
        if sleep:
            batch_vllm_engine_call(generator.vllm_engines, "sleep")
    if consumed != num_prompts:
        raise RuntimeError(f"held-out evaluation sent {consumed} of {num_prompts} prompts to the engines")
    return experiences


def engine_llm(actor):
    """The vLLM `AsyncLLM` of an upstream engine actor (`RolloutRayActor.llm`)."""
    return actor.llm


def wrap_engine_llm(actor, wrapper) -> None:
    """Replace an engine actor's `llm` by `wrapper(llm)`; upstream's `generate`, weight-sync and sleep methods read
    the attribute at call time, so they all go through the wrapper."""
    actor.llm = wrapper(actor.llm)


def engine_vllm_config(actor):
    """The running engine's `VllmConfig` (scheduler and cache limits), from inside its actor."""
    return engine_llm(actor).vllm_config


def reward_endpoints(executor) -> list[str]:
    """The reward URLs or `.py` file of upstream's `SingleTurnAgentExecutor` (`--reward.remote_url`).

    [] when there are none, and for a user's executor (`--train.agent_func_path`) that does not extend
    `SingleTurnAgentExecutor`: such an executor computes its rewards its own way."""
    return list(getattr(executor, "reward_endpoints", None) or [])


def executor_logger() -> logging.Logger:
    """The logger of upstream's agent executors (`openrlhf.utils.agent.logger`). `SingleTurnAgentExecutor.execute`
    catches a failed reward call (the reward function's exception, the HTTP error) and only logs it there, at info
    level, before returning reward=None; the engine actor keeps those messages to name the cause when it fails the
    step (pinned below)."""
    from openrlhf.utils import agent

    return agent.logger


def dataset_prompts(dataloader) -> list[str]:
    """The prompt texts of the upstream `PromptDataset` behind a prompts dataloader, in dataset order."""
    return dataloader.dataset.prompts
