"""Steps 2-4 on the trainer side: a plan per prompt, dispatch weighted by M'_i, exactly n samples back per prompt.

`DartsSamplesGenerator` extends upstream's `SamplesGenerator` by two methods:
- `generate_samples` marks the call as a training rollout (evaluation stays upstream's) and, afterwards, fetches the
  group outcomes from the engines (one call per engine), feeds the planner and computes `darts/*` metrics;
- `_dispatch_prompts_to_vllm` plans the prompts and calls `generate_group` instead of `generate_responses`.
Each ref still resolves to n response dicts, so upstream's collection loop, dynamic filtering and experience building
run unchanged, and every group stays contiguous. With a `group_sink` (`--darts.stream`), training rollouts are collected
by `_generate_streaming` instead, a mirror of upstream's loop that takes each group's kept samples in parts as the
engines release them (a dual-end group's short end before its long end) and hands them to the streaming experience
maker.

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
STREAM_POLL_S = 0.05  # how often a streaming rollout drains the engines' outboxes (token chunks, released parts)
ABANDON_WAIT_S = 60.0  # how long a failed streaming step waits for its cancelled groups to stop


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
        self._ref_groups: dict = {}  # generate_group ref -> its group id (streaming: parts come by group id)
        self._stream_chunk_tokens: int | None = None  # set while a token-streaming rollout runs
        self._streaming = False  # set while _generate_streaming runs
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
        ray.get([engine.pop_stream_outbox.remote() for engine in self.vllm_engines])  # token chunks, released parts
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
                    early_release=self._streaming and self.early_release,
                )
            )
            if self._streaming:
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
    # Streaming: ask the engines to release kept samples as soon as they are final (a dual-end group's short end before
    # its long end). False hands on whole groups only, as before per-sample release (bench.streaming's stream_group).
    early_release = True

    def _generate_vllm(self, dataloader_iter, num_prompts: int, dynamic_filtering, **generate_kwargs):
        # Training rollouts draw from upstream's own training iterator; evaluation passes its own and stays upstream's.
        training = dataloader_iter is upstream.training_dataloader_iter(self)
        if self.group_sink is None or not training:
            return super()._generate_vllm(dataloader_iter, num_prompts, dynamic_filtering, **generate_kwargs)
        return self._generate_streaming(dataloader_iter, num_prompts, dynamic_filtering, **generate_kwargs)

    def _generate_streaming(self, dataloader_iter, num_prompts: int, dynamic_filtering, **generate_kwargs):
        """Upstream's contract `(experiences, prompts_consumed, exhausted)`, handing each group's kept samples to the
        sink as soon as they are final, so their forwards run while the other groups still generate.

        Mirrors samples_generator.py@0.11.2 `SamplesGenerator._generate_vllm` (pinned in `upstream.BEHAVIOUR_PINNED`):
        the prompt draw, the ray.wait loop, the experience building and the filter-and-replace rule are upstream's.

        The engines release each group's kept samples in parts (`generate_group(..., early_release=True)`): a
        dual-end group's K short members once no sibling can displace them, the rest when it ends; a shortest-only
        group's n at its release (with `early_release = False` a group's ref brings its n at the end instead). The
        first part of a group that is not complete yet goes to the sink at once (`dispatch_part`). Dynamic filtering keeps upstream's semantics on whole groups: once all n are in, a group
        whose mean score is not strictly inside `--algo.dynamic_filtering_range` is dropped (only when every sample has
        a score; `drop_group`, its released part's forwards are wasted) and replaced by one new prompt; otherwise it
        is accepted (`dispatch_group`). The returned experiences are in the sink's index order (`close_stream`):
        every group contiguous, its samples in release order.

        If anything fails, the groups still generating are cancelled (their engines abort every request of them) and
        the engines' outboxes and group records of this step are emptied before the error propagates.
        """
        from tqdm import tqdm

        prompts, labels, images, exhausted = upstream.collect_prompt_batch(dataloader_iter, num_prompts)
        if not prompts:
            return [], 0, True
        consumed = len(prompts)
        sink = self.group_sink
        n = self.config.n_samples_per_prompt
        tokens = getattr(sink, "token_streamer", None) is not None
        self._stream_chunk_tokens = self.config.stream_chunk_tokens if tokens else None
        self._streaming = True
        sink.open_stream()
        pending = []
        parts: dict[int, tuple[list, list]] = {}  # group id -> (experiences, stream keys) released so far

        def take(group_id: int, responses: list[dict], last: bool) -> None:
            """A part of a group (`last`: what its ref returned once it ended); hands it on once it can be."""
            nonlocal consumed, exhausted
            if group_id in complete:
                if responses:
                    raise RuntimeError(f"group {group_id} sent {len(responses)} samples after its n={n} were in")
                return
            new = [self._process_response_into_experience(r, **generate_kwargs) for r in responses]
            keys = [r.get("darts_stream_key") for r in responses]  # None without token streaming
            group, group_keys = parts.setdefault(group_id, ([], []))
            first = not group
            group += new
            group_keys += keys
            if len(group) < n and first and not last:
                sink.dispatch_part(new, group_id=group_id, stream_keys=keys)  # e.g. a dual-end group's short end
                return
            if len(group) < n and not last:
                raise RuntimeError(
                    f"group {group_id} released a second part ({len(new)} samples after {len(group) - len(new)}) "
                    f"before it ended; a group releases one early part, then the rest, n={n} in all"
                )
            if len(group) != n:
                raise RuntimeError(f"group {group_id} ended with {len(group)} kept samples; expected n={n}")
            complete.add(group_id)
            if dynamic_filtering and not self._passes_dynamic_filter(group):
                sink.drop_group(group_id)
                new_prompts, new_labels, new_images, exhausted = upstream.collect_prompt_batch(dataloader_iter, 1)
                consumed += len(new_prompts)
                if new_prompts:
                    pending.extend(
                        self._dispatch_prompts_to_vllm(new_prompts, new_labels, images=new_images, **generate_kwargs)
                    )
                return
            sink.dispatch_group(group, group_id=group_id, stream_keys=group_keys)
            bar.update()

        complete: set[int] = set()
        try:
            pending += self._dispatch_prompts_to_vllm(prompts, labels, images=images, **generate_kwargs)
            with tqdm(total=len(prompts), desc="Generate samples (streaming)") as bar:
                while pending:
                    ready, waiting = ray.wait(pending, num_returns=1, timeout=STREAM_POLL_S)
                    pending[:] = waiting
                    # Drained after the wait, so a resolved group's parts and chunks are in before its ref is taken.
                    chunks, released = self._pop_stream_outbox()
                    if chunks:
                        sink.add_token_chunks(chunks)
                    for part in released:
                        take(part["group_id"], part["responses"], last=False)
                    for ref in ready:
                        group_id = self._ref_groups.pop(ref)
                        take(group_id, ray.get(ref), last=True)  # ray.get raises the group's error
                        parts.pop(group_id, None)
                        complete.discard(group_id)
        except BaseException:
            self._abandon_step(pending)
            sink.abort_stream()
            raise
        finally:
            self._stream_chunk_tokens = None
            self._streaming = False
            self._ref_groups.clear()
        return sink.close_stream(), consumed, exhausted

    def _pop_stream_outbox(self) -> tuple[list[dict], list[dict]]:
        """Token chunks and released parts of every engine (`pop_stream_outbox`), in each engine's emission order."""
        boxes = ray.get([e.pop_stream_outbox.remote() for e in self.vllm_engines])
        return [c for box in boxes for c in box["chunks"]], [p for box in boxes for p in box["parts"]]

    def _abandon_step(self, refs: list) -> None:
        """A failed streaming step: cancel the groups still generating (the engine actor stops their candidates, and
        vLLM aborts a request whose stream is cancelled), wait for them to end, then empty the engines' outboxes and
        group records, so no request, chunk or part of this step outlives it."""
        for ref in refs:
            ray.cancel(ref)
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=ABANDON_WAIT_S)
        self._pop_stream_outbox()
        for records in ray.get([e.pop_group_outcomes.remote() for e in self.vllm_engines]):
            for record in records:
                self._group_prompts.pop(record["group_id"], None)

    def _passes_dynamic_filter(self, group) -> bool:
        if any(e.scores is None for e in group):
            return True  # upstream filters only groups whose every sample carries a score
        mean = sum(e.scores[0].item() for e in group) / len(group)
        low, high = self.args.algo.dynamic_filtering_range
        return low < mean < high
