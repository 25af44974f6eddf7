"""Steps 2-4 on the trainer side: a plan per prompt, dispatch weighted by M'_i, exactly n samples back per prompt.

`DartsSamplesGenerator` extends upstream's `SamplesGenerator` by two methods:
- `generate_samples` marks the call as a training rollout (evaluation stays upstream's) and, afterwards, fetches the
  group outcomes from the engines (one call per engine), feeds the planner and computes `darts/*` metrics;
- `_dispatch_prompts_to_vllm` plans the prompts and calls `generate_group` instead of `generate_responses`.
Each ref still resolves to n response dicts, so upstream's collection loop, dynamic filtering and experience building
run unchanged, and every group stays contiguous.
"""

from __future__ import annotations

import heapq
import time

import ray

from openrlhf_darts import upstream
from openrlhf_darts.config import DartsConfig
from openrlhf_darts.core.types import GroupOutcome
from openrlhf_darts.metrics import outcome_metrics
from openrlhf_darts.trainer.planner import GroupPlanner


class DartsSamplesGenerator(upstream.SamplesGenerator):
    def __init__(self, strategy, prompts_dataloader, eval_dataloader, tokenizer, vllm_engines, config: DartsConfig):
        super().__init__(strategy, prompts_dataloader, eval_dataloader, tokenizer, vllm_engines)
        self.config = config
        self.planner = GroupPlanner(config, num_engines=max(1, len(self.vllm_engines)))
        self._training_rollout = False
        self._next_group_id = 0
        self._group_prompts: dict[int, str] = {}
        self.last_outcomes: list[GroupOutcome] = []
        self.last_metrics: dict[str, float] = {}

    def generate_samples(self, **generate_kwargs):
        if not self.config.enable:
            return super().generate_samples(**generate_kwargs)
        self._training_rollout = True
        self._allocation_seconds = 0.0
        try:
            result = super().generate_samples(**generate_kwargs)
        finally:
            self._training_rollout = False
        self._collect_outcomes()
        return result

    def _dispatch_prompts_to_vllm(self, prompts, labels, *, images=None, **generate_kwargs):
        if not self._training_rollout:
            return super()._dispatch_prompts_to_vllm(prompts, labels, images=images, **generate_kwargs)
        n = generate_kwargs.get("n_samples_per_prompt", self.args.rollout.n_samples_per_prompt)
        if n != self.config.n_samples_per_prompt:
            raise ValueError(
                f"n_samples_per_prompt={n} in this rollout call differs from the DARTS config's "
                f"{self.config.n_samples_per_prompt}; plans keep exactly --rollout.n_samples_per_prompt per prompt"
            )
        plans = self.planner.plan(prompts)
        self._allocation_seconds += self.planner.last_seconds
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
                )
            )
        return refs

    def _collect_outcomes(self) -> None:
        records = [r for rs in ray.get([e.pop_group_outcomes.remote() for e in self.vllm_engines]) for r in rs]
        records.sort(key=lambda r: r["group_id"])
        prompts = [self._group_prompts.pop(r["group_id"]) for r in records]
        outcomes = [GroupOutcome.from_dict(r["outcome"]) for r in records]
        self.planner.observe(prompts, outcomes)
        self.last_outcomes = outcomes
        metrics = outcome_metrics(outcomes)
        metrics["darts/budget"] = float(self.planner.last_budget)
        metrics["darts/budget_cost_model"] = float(self.planner.last_budget_mode == "cost_model")
        metrics["darts/length_std_mean"] = self.planner.stats.mean_std()
        metrics["timing/darts_allocation"] = self._allocation_seconds
        self.last_metrics = metrics

    def pop_metrics(self) -> dict[str, float]:
        metrics, self.last_metrics = self.last_metrics, {}
        return metrics
