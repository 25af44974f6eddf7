"""Tail batching on the trainer side: launch ceil(r * B) prompts, train the first B groups that complete, abort the rest.

`TailBatchingSamplesGenerator` extends upstream's `SamplesGenerator` by one method, `generate_samples` (training
rollouts); evaluation keeps upstream's `generate_eval_samples`, `_generate_vllm` and `_dispatch_prompts_to_vllm`. One
step (`--tail_batching.*`, docs/design.md "Tail batching"):

1. **Launch.** The deferred queue first (prompts aborted by earlier steps, oldest first), then fresh prompts from
   upstream's dataloader, ceil(r * B) in all. With `--tail_batching.max_deferrals K`, a prompt deferred K times is
   pinned: trained whatever its finish order (`core.tail_batching.pinned_flags`); without it (the default) a deferred
   prompt races again every step. Every prompt goes to the least-loaded
   engine (upstream's rule, n requests each) as one `generate_tail_group` call.
2. **Race** (`core.tail_batching.TailRace`). Groups are taken as they complete. With dynamic filtering, a group whose
   mean score is not strictly inside `--algo.dynamic_filtering_range` is dropped and replaced by one fresh prompt
   (upstream's rule), so filtered groups never count towards B. Once the B slots are taken (accepted groups plus
   pinned ones still running), every other running group is aborted on its engine at once (`abort_tail_groups`,
   which returns only when none of their requests is left in vLLM).
3. **Aborted prompts** go to the back of the deferred queue with one more deferral (`--tail_batching.aborted_prompts
   defer`, the default), or are dropped (`drop`); either way their tokens are wasted and counted. Every request of
   the step, trained or not, is kept in `last_candidates` as the engine reported it (tokens generated, cut short by
   the abort), for the local mode's candidate figures (local/trainer.py).

The dataloader running out: a step launches what the queue and the rest of the epoch hold; when that is B or fewer,
nothing is aborted and every launched group is trained (the epoch's last, partial batch, as upstream). The generator
reports the epoch exhausted only when the dataloader is drained **and** the queue is empty, so every deferred prompt is
trained (or filtered) within its epoch. `prompts_consumed` counts prompts drawn from the dataloader, so upstream's
`total_consumed_prompts` stays the dataloader's position; the queue rides in the checkpoint beside it
(`trainer/ppo_trainer.py`). Each group's samples stay contiguous, n per prompt, as upstream's advantages need.
"""

from __future__ import annotations

import heapq
import time

import ray

from openrlhf_darts import upstream
from openrlhf_darts.core.tail_batching import (
    DeferredPrompt,
    DeferredQueue,
    GroupState,
    TailRace,
    launch_count,
    pinned_flags,
)
from openrlhf_darts.tail_batching import TailBatchingConfig


class TailBatchingSamplesGenerator(upstream.SamplesGenerator):
    def __init__(
        self, strategy, prompts_dataloader, eval_dataloader, tokenizer, vllm_engines, config: TailBatchingConfig
    ):
        super().__init__(strategy, prompts_dataloader, eval_dataloader, tokenizer, vllm_engines)
        if not config.enable:
            raise ValueError("TailBatchingSamplesGenerator needs a config with --tail_batching.enable")
        self.config = config
        self.queue = DeferredQueue()
        self._epoch_iter = None  # this epoch's dataloader iterator; None: the next call starts an epoch
        self._drained = False  # the epoch's dataloader ran out (the queue may still hold prompts)
        self._next_group_id = 0
        self.last_metrics: dict[str, float] = {}
        # Every candidate of the last step, as the engine reported it: (tokens generated, cut short by an abort).
        self.last_candidates: list[tuple[int, bool]] = []

    def generate_samples(self, **generate_kwargs):
        """Upstream's contract: `(experiences, filter_pass_rate, prompts_consumed, exhausted)` for one step."""
        if self._epoch_iter is None:
            self._epoch_iter = iter(self.prompts_dataloader)
            self._drained = False
        if self.args.vllm.enable_sleep:
            upstream.batch_vllm_engine_call(self.vllm_engines, "wake_up")
        try:
            experiences, consumed = self._step(**generate_kwargs)
        finally:
            if self.args.vllm.enable_sleep:
                upstream.batch_vllm_engine_call(self.vllm_engines, "sleep")
        exhausted = self._drained and len(self.queue) == 0
        if exhausted:
            self._epoch_iter = None
        filter_pass_rate = None
        if self.args.algo.dynamic_filtering_enable and consumed:
            filter_pass_rate = len(experiences) / consumed * 100  # upstream's formula, so the arms log the same key
        return experiences, filter_pass_rate, consumed, exhausted

    def pop_metrics(self) -> dict[str, float]:
        metrics, self.last_metrics = self.last_metrics, {}
        return metrics

    # ---- one step ---------------------------------------------------------------------------------------------------
    def _fresh(self, count: int) -> list[DeferredPrompt]:
        if count <= 0 or self._drained:
            return []
        prompts, labels, images, exhausted = upstream.collect_prompt_batch(self._epoch_iter, count)
        self._drained = exhausted
        return [DeferredPrompt(p, label, image, 0) for p, label, image in zip(prompts, labels, images, strict=True)]

    def _step(self, **generate_kwargs) -> tuple[list, int]:
        config, args = self.config, self.args
        batch, n = args.rollout.batch_size, args.rollout.n_samples_per_prompt
        count = launch_count(config.launch_ratio, batch)
        resumed = self.queue.take(count)
        fresh = self._fresh(count - len(resumed))
        consumed = len(fresh)
        launched = resumed + fresh  # index in the race -> prompt
        if not launched:
            self.last_metrics, self.last_candidates = {}, []
            return [], consumed
        target = min(batch, len(launched))  # the epoch's last prompts: train them all
        max_deferrals = config.max_deferrals if config.aborted_prompts == "defer" else None
        race = TailRace(target, pinned_flags([p.deferrals for p in launched], target, max_deferrals))
        pinned = sum(race.pinned)
        runs = _Runs(self, upstream.rollout_sampling_params(args, generate_kwargs), n, generate_kwargs)
        runs.dispatch(launched, range(len(launched)))

        accepted, tokens_kept, tokens_other, filtered, abort_s = [], 0, 0, 0, 0.0
        doomed: list[int] = []
        candidates: list[tuple[int, bool]] = []
        try:
            while True:
                # Groups that can no longer be trained are aborted at once: right after launch when pinned prompts
                # hold every slot, later as soon as completed and pinned groups fill the batch.
                newly = race.abort_now()
                if newly:
                    start = time.perf_counter()
                    runs.abort(newly)
                    abort_s += time.perf_counter() - start
                    doomed += newly
                if race.done:
                    break
                index, record = runs.next_completed()
                candidates += zip(record["lengths"], record["cut"])
                group = [self._process_response_into_experience(r, **generate_kwargs) for r in record["responses"]]
                passed = not args.algo.dynamic_filtering_enable or _passes_dynamic_filter(group, args)
                if race.complete(index, passed) is GroupState.ACCEPTED:
                    accepted.extend(group)
                    tokens_kept += sum(record["lengths"])
                else:  # filtered: consumed like upstream, replaced by one fresh prompt
                    filtered += 1
                    tokens_other += sum(record["lengths"])
                    replacement = self._fresh(1)
                    consumed += len(replacement)
                    if replacement:
                        launched += replacement
                        runs.dispatch(replacement, [race.launch()])
            aborted_records = runs.collect(doomed)
        except BaseException:
            runs.abort_all()  # no vLLM request outlives a failed step
            raise

        wasted = sum(sum(record["lengths"]) for record in aborted_records)
        candidates += [pair for record in aborted_records for pair in zip(record["lengths"], record["cut"])]
        self.last_candidates = candidates
        cut_short = sum(record["aborted"] for record in aborted_records)
        aborted = [launched[i] for i in doomed]
        if config.aborted_prompts == "defer":
            self.queue.extend([DeferredPrompt(p.prompt, p.label, p.image, p.deferrals + 1) for p in aborted])
        self.last_metrics = {
            "tail_batching/prompts_launched": float(len(launched)),
            "tail_batching/prompts_resumed": float(len(resumed)),
            "tail_batching/prompts_pinned": float(pinned),
            "tail_batching/prompts_trained": float(race.count(GroupState.ACCEPTED)),
            "tail_batching/prompts_filtered": float(filtered),
            "tail_batching/prompts_aborted": float(len(aborted)),
            "tail_batching/prompts_aborted_running": float(cut_short),
            "tail_batching/prompts_deferred": float(len(aborted) if config.aborted_prompts == "defer" else 0),
            "tail_batching/prompts_dropped": float(len(aborted) if config.aborted_prompts == "drop" else 0),
            "tail_batching/queue_size": float(len(self.queue)),
            "tail_batching/tokens_generated": float(tokens_kept + tokens_other + wasted),
            "tail_batching/tokens_kept": float(tokens_kept),
            "tail_batching/wasted_tokens": float(wasted),
            "timing/tail_batching_abort": abort_s,
        }
        return accepted, consumed


class _Runs:
    """The step's `generate_tail_group` calls: dispatch to the least-loaded engine, wait, abort, collect."""

    def __init__(self, generator: TailBatchingSamplesGenerator, sampling_params, n: int, generate_kwargs: dict):
        self.generator = generator
        self.engines = generator.vllm_engines
        self.sampling_params = sampling_params
        self.n = n
        self.max_length = generate_kwargs.get("max_len", 2048)
        self.pending: dict = {}  # ref -> race index, for groups not yet completed or aborted
        self.where: dict[int, tuple] = {}  # race index -> (engine index, group id, ref)

    def dispatch(self, prompts: list[DeferredPrompt], indices) -> None:
        # Upstream's least-loaded rule: snapshot the engines' unfinished requests, each prompt adds n.
        loads = ray.get([engine.get_num_unfinished_requests.remote() for engine in self.engines])
        heap = [(load, e) for e, load in enumerate(loads)]
        heapq.heapify(heap)
        for prompt, index in zip(prompts, indices, strict=True):
            load, e = heapq.heappop(heap)
            heapq.heappush(heap, (load + self.n, e))
            group_id = self.generator._next_group_id
            self.generator._next_group_id += 1
            ref = self.engines[e].generate_tail_group.remote(
                group_id=group_id,
                prompt=prompt.prompt,
                label=prompt.label,
                sampling_params=self.sampling_params,
                max_length=self.max_length,
                hf_tokenizer=self.generator.tokenizer,
                num_samples=self.n,
                images=prompt.image,
            )
            self.pending[ref] = index
            self.where[index] = (e, group_id, ref)

    def next_completed(self) -> tuple[int, dict]:
        """The next group to complete: (race index, its record). Raises the group's error if it failed."""
        ready, _ = ray.wait(list(self.pending), num_returns=1)
        index = self.pending.pop(ready[0])
        record = ray.get(ready[0])
        if record["aborted"]:
            raise RuntimeError(f"group {self.where[index][1]} came back aborted, but this step never aborted it")
        return index, record

    def abort(self, indices: list[int]) -> None:
        """Abort these groups (one call per engine); returns once none of their requests is left in vLLM."""
        by_engine: dict[int, list[int]] = {}
        for index in indices:
            engine, group_id, ref = self.where[index]
            by_engine.setdefault(engine, []).append(group_id)
            self.pending.pop(ref, None)
        ray.get([self.engines[e].abort_tail_groups.remote(ids) for e, ids in by_engine.items()])

    def collect(self, indices: list[int]) -> list[dict]:
        """The records of aborted groups; a group that completed while its abort was on the way is among them."""
        return ray.get([self.where[i][2] for i in indices])

    def abort_all(self) -> None:
        """After a failure: abort every group still pending and wait for all of them, ignoring their errors."""
        refs = [self.where[i][2] for i in self.where]
        if self.pending:
            self.abort(list(self.pending.values()))
        ray.wait(refs, num_returns=len(refs))


def _passes_dynamic_filter(group, args) -> bool:
    """Upstream's rule: keep unless every sample has a score and their mean is not strictly inside the range."""
    if any(e.scores is None for e in group):
        return True
    mean = sum(e.scores[0].item() for e in group) / len(group)
    low, high = args.algo.dynamic_filtering_range
    return low < mean < high
