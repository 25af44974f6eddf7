"""Steps 2-4 on the trainer side: a plan per prompt, dispatch weighted by M'_i, exactly n samples back per prompt.

`DartsSamplesGenerator` extends upstream's `SamplesGenerator` by two methods:
- `generate_samples` marks the call as a training rollout (evaluation stays upstream's) and, afterwards, fetches the
  group outcomes from the engines (one call per engine), feeds the planner and computes `darts/*` metrics;
- `_dispatch_prompts_to_vllm` plans the prompts and calls `generate_group` instead of `generate_responses`.
Each ref still resolves to n response dicts, so upstream's collection loop, dynamic filtering and experience building
run unchanged, and every group stays contiguous.

**Warm-up** (`--darts.warmup_steps W`, the reference DAPO trainer's first steps): while fewer than W training steps have
completed (`completed_steps`, which the trainer sets from upstream's `global_step`, checkpoints included), the prompts
are planned by `warmup_plans` instead of the planner (left untouched): the fixed budget spread evenly, every group
shortest-only. The planner still observes every outcome, so the length statistics are warm when allocation starts.
"""

from __future__ import annotations

import heapq
import logging
import time

import ray

from openrlhf_darts import upstream
from openrlhf_darts.config import DartsConfig
from openrlhf_darts.core.budget import fixed_budget
from openrlhf_darts.core.types import GroupOutcome, GroupPlan
from openrlhf_darts.metrics import outcome_metrics
from openrlhf_darts.trainer.planner import GroupPlanner, prompt_key

logger = logging.getLogger(__name__)
TOKEN_POLL_S = 0.05  # how often a token-streaming rollout drains the engines' chunk outboxes


def warmup_plans(config: DartsConfig, prompts: list[str]) -> list[GroupPlan]:
    """Plans of a warm-up step: the fixed budget round(avg_candidates * N) spread evenly, every group shortest-only
    (L = 0). The counts differ by at most one; the remainder goes to the prompts with the smallest keys, not to the
    first ones of the batch. The reference DAPO trainer runs its first 10 steps with 12 candidates per prompt (its
    average) and stops each group after its first n finishes."""
    budget = fixed_budget(len(prompts), config.avg_candidates, config.min_candidates, config.max_candidates)
    base, extra = divmod(budget, len(prompts))  # base + 1 <= max_candidates whenever extra > 0: budget <= N * max
    counts = [base] * len(prompts)
    for i in sorted(range(len(prompts)), key=lambda i: prompt_key(prompts[i]))[:extra]:
        counts[i] += 1
    return [GroupPlan(num_candidates=m, num_keep=config.n_samples_per_prompt, num_long=0) for m in counts]


class DartsSamplesGenerator(upstream.SamplesGenerator):
    def __init__(self, strategy, prompts_dataloader, eval_dataloader, tokenizer, vllm_engines, config: DartsConfig):
        super().__init__(strategy, prompts_dataloader, eval_dataloader, tokenizer, vllm_engines)
        self.config = config
        self.planner = GroupPlanner(config, num_engines=max(1, len(self.vllm_engines)))
        self._training_rollout = False
        self._next_group_id = 0
        self._group_prompts: dict[int, str] = {}
        self._ref_groups: dict = {}  # generate_group ref -> its group id (token streaming releases by group)
        self._stream_chunk_tokens: int | None = None  # set while a token-streaming rollout runs
        self.completed_steps = 0  # training steps done (upstream's global_step), set by DartsPPOTrainer
        self._warmup = False  # this rollout is a warm-up step (--darts.warmup_steps)
        self.last_outcomes: list[GroupOutcome] = []
        self.last_metrics: dict[str, float] = {}
        self._inflight: list = []  # this training rollout's generate_group refs (stopped if the rollout fails)

    def generate_samples(self, **generate_kwargs):
        if not self.config.enable:
            return super().generate_samples(**generate_kwargs)
        self._training_rollout = True
        self._warmup = self.completed_steps < self.config.warmup_steps
        self._allocation_seconds = 0.0
        self._planned_candidates = 0
        self._inflight = []
        try:
            result = super().generate_samples(**generate_kwargs)
        except BaseException as error:
            try:
                self._abort_rollout(error)
            except Exception as cleanup:  # e.g. an engine that died: the step's own error stays the one raised
                error.add_note(f"DARTS could not abort the failed step's groups: {type(cleanup).__name__}: {cleanup}")
            raise
        finally:
            self._training_rollout = False
            self._inflight = []
        self._collect_outcomes()
        return result

    def _abort_rollout(self, error: BaseException) -> None:
        """A training rollout failed (a group raised, the collector broke): stop every group still generating on any
        engine and wait until their requests have left vLLM, then drop what the step left behind (outcomes, token
        chunks), so nothing of it is observed, planned from or handed to training. The caller re-raises `error`."""
        logger.error("DARTS rollout failed (%s); aborting the step's groups on every engine", type(error).__name__)
        reason = f"the rollout step failed ({type(error).__name__}; the step raises it)"
        for ref in self._inflight:
            ray.cancel(ref)  # a call still queued at its actor never starts; a running one is aborted below
        aborted = ray.get([engine.abort_groups.remote(reason) for engine in self.vllm_engines])
        ray.get([engine.pop_group_outcomes.remote() for engine in self.vllm_engines])
        ray.get([engine.pop_token_chunks.remote() for engine in self.vllm_engines])
        self._group_prompts.clear()
        self._ref_groups.clear()
        logger.error("DARTS rollout failed: aborted %d running groups", sum(aborted))

    def _dispatch_prompts_to_vllm(self, prompts, labels, *, images=None, **generate_kwargs):
        if not self._training_rollout:
            return super()._dispatch_prompts_to_vllm(prompts, labels, images=images, **generate_kwargs)
        n = generate_kwargs.get("n_samples_per_prompt", self.args.rollout.n_samples_per_prompt)
        if n != self.config.n_samples_per_prompt:
            raise ValueError(
                f"n_samples_per_prompt={n} in this rollout call differs from the DARTS config's "
                f"{self.config.n_samples_per_prompt}; plans keep exactly --rollout.n_samples_per_prompt per prompt"
            )
        if self._warmup:
            plans = warmup_plans(self.config, list(prompts))
        else:
            plans = self.planner.plan(prompts)
            self._allocation_seconds += self.planner.last_seconds
        self._planned_candidates += sum(p.num_candidates for p in plans)  # dynamic-filtering replacements plan again
        sampling_params = upstream.rollout_sampling_params(self.args, generate_kwargs)
        max_length = generate_kwargs.get("max_len", 2048)

        # Least-loaded engine first, weighing each prompt by the candidates it launches (not by n).
        loads = ray.get([engine.get_num_unfinished_requests.remote() for engine in self.vllm_engines])
        heap = [(load, index) for index, load in enumerate(loads)]
        heapq.heapify(heap)
        images = images if images is not None else [None] * len(prompts)
        refs = []
        for prompt, label, image, plan in zip(prompts, labels, images, plans, strict=True):
            load, index = heapq.heappop(heap)
            heapq.heappush(heap, (load + plan.num_candidates, index))
            group_id = self._next_group_id
            self._next_group_id += 1
            self._group_prompts[group_id] = prompt
            refs.append(
                self.vllm_engines[index].generate_group.remote(
                    prompt=prompt,
                    label=label,
                    sampling_params=sampling_params,
                    max_length=max_length,
                    hf_tokenizer=self.tokenizer,
                    plan=plan,
                    images=image,
                    group_id=group_id,
                    stream_chunk_tokens=self._stream_chunk_tokens,
                    truncated_rule=self.config.truncated,
                )
            )
            if self._stream_chunk_tokens is not None:
                self._ref_groups[refs[-1]] = group_id
        self._inflight += refs
        return refs

    def _collect_outcomes(self) -> None:
        # Each outcome carries its group's generation cap (the max_tokens its requests reached the engine with, which
        # upstream's executor sets to max_len - prompt tokens when max_new_tokens is None): the length fits clip there.
        records = [r for rs in ray.get([e.pop_group_outcomes.remote() for e in self.vllm_engines]) for r in rs]
        records.sort(key=lambda r: r["group_id"])
        prompts = [self._group_prompts.pop(r["group_id"]) for r in records]
        outcomes = [GroupOutcome.from_dict(r["outcome"]) for r in records]
        self.planner.observe(prompts, outcomes)
        self.last_outcomes = outcomes
        metrics = outcome_metrics(outcomes)
        metrics["darts/budget"] = float(self._planned_candidates)
        metrics["darts/budget_cost_model"] = float(not self._warmup and self.planner.last_budget_mode == "cost_model")
        metrics["darts/warmup"] = float(self._warmup)
        metrics["darts/length_std_mean"] = self.planner.stats.mean_std()
        metrics["timing/darts_allocation"] = self._allocation_seconds
        self.last_metrics = metrics

    def pop_metrics(self) -> dict[str, float]:
        metrics, self.last_metrics = self.last_metrics, {}
        return metrics

    # ---- sample-level streaming (--darts.stream; trainer/experience_maker.py) ----------------------------------------
    # The experience maker that scores groups while generation continues (open_stream / dispatch_group /
    # close_stream / abort_stream); set by the trainer when --darts.stream is on, None means upstream's collection.
    group_sink = None

    def _generate_vllm(self, dataloader_iter, num_prompts: int, dynamic_filtering, **generate_kwargs):
        # Training rollouts draw from upstream's own training iterator; evaluation passes its own and stays upstream's.
        training = dataloader_iter is upstream.training_dataloader_iter(self)
        if self.group_sink is None or not training:
            return super()._generate_vllm(dataloader_iter, num_prompts, dynamic_filtering, **generate_kwargs)
        return self._generate_streaming(dataloader_iter, num_prompts, dynamic_filtering, **generate_kwargs)

    def _generate_streaming(self, dataloader_iter, num_prompts: int, dynamic_filtering, **generate_kwargs):
        """Upstream's contract `(experiences, prompts_consumed, exhausted)`, handing each accepted group to the sink
        the moment it resolves, so its forwards run while the other groups still generate.

        Mirrors samples_generator.py@0.11.2 `SamplesGenerator._generate_vllm` (pinned in `upstream.BEHAVIOUR_PINNED`):
        the prompt draw, the ray.wait loop, the experience building and the filter-and-replace rule are upstream's.

        Dynamic filtering keeps upstream's semantics: a group whose mean score is not strictly inside
        `--algo.dynamic_filtering_range` is dropped (only when every sample has a score) and replaced by one new prompt.
        """
        from tqdm import tqdm

        prompts, labels, images, exhausted = upstream.collect_prompt_batch(dataloader_iter, num_prompts)
        if not prompts:
            return [], 0, True
        consumed = len(prompts)
        sink = self.group_sink
        tokens = getattr(sink, "token_streamer", None) is not None
        self._stream_chunk_tokens = self.config.stream_chunk_tokens if tokens else None
        sink.open_stream()
        try:
            pending = list(self._dispatch_prompts_to_vllm(prompts, labels, images=images, **generate_kwargs))
            accepted = []
            with tqdm(total=len(prompts), desc="Generate samples (streaming)") as bar:
                while pending:
                    ready, pending = ray.wait(pending, num_returns=1, timeout=TOKEN_POLL_S if tokens else None)
                    if tokens:
                        # Drained after the wait, so a resolved group's chunks are all in before it is dispatched.
                        sink.add_token_chunks(self._pop_token_chunks())
                    if not ready:
                        continue
                    group_id = self._ref_groups.pop(ready[0], None)
                    responses = ray.get(ready[0])
                    group = [self._process_response_into_experience(r, **generate_kwargs) for r in responses]
                    if dynamic_filtering and not self._passes_dynamic_filter(group):
                        sink.drop_group(group_id)
                        new_prompts, new_labels, new_images, exhausted = upstream.collect_prompt_batch(
                            dataloader_iter, 1
                        )
                        consumed += len(new_prompts)
                        if new_prompts:
                            pending += self._dispatch_prompts_to_vllm(
                                new_prompts, new_labels, images=new_images, **generate_kwargs
                            )
                        continue
                    accepted.extend(group)
                    keys = [r.get("darts_stream_key") for r in responses]  # all None without token streaming
                    sink.dispatch_group(group, group_id=group_id, stream_keys=keys)
                    bar.update()
        except BaseException:
            sink.abort_stream()
            raise
        finally:
            self._stream_chunk_tokens = None
            self._ref_groups.clear()
        sink.close_stream()
        return accepted, consumed, exhausted

    def _pop_token_chunks(self) -> list[dict]:
        return [c for cs in ray.get([e.pop_token_chunks.remote() for e in self.vllm_engines]) for c in cs]

    def _passes_dynamic_filter(self, group) -> bool:
        if any(e.scores is None for e in group):
            return True  # upstream filters only groups whose every sample carries a score
        mean = sum(e.scores[0].item() for e in group) / len(group)
        low, high = self.args.algo.dynamic_filtering_range
        return low < mean < high
