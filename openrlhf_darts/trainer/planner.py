"""Step 2 of the pipeline: length statistics -> budget -> one `GroupPlan` per prompt (spec 3(d)-(f)).

`GroupPlanner` is the stateful shell around the pure core: it keys prompts, keeps the `LengthStats` table and a short
history of candidate lengths for the cost-model budget, and turns a batch of prompts into plans. It is a plain object
owned by the samples generator; its state rides in OpenRLHF checkpoints through `state_dict`.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Sequence

from openrlhf_darts.config import DartsConfig
from openrlhf_darts.core.allocation import allocate_candidates, normalize_weights, num_long_for
from openrlhf_darts.core.budget import fixed_budget, utility_budget
from openrlhf_darts.core.cost_model import PerTokenLatency
from openrlhf_darts.core.length_stats import LengthStats
from openrlhf_darts.core.types import GroupOutcome, GroupPlan


def prompt_key(prompt: str) -> str:
    """Stable key of a prompt. Upstream's batch collector drops the datasource and index, so the text is the identity."""
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:20]


class GroupPlanner:
    """Plans per prompt from the smoothed length spread; observes outcomes to update the spread."""

    def __init__(self, config: DartsConfig, num_engines: int = 1):
        self.config = config
        self.num_engines = num_engines
        self.stats = LengthStats(alpha=config.ema_alpha)
        self.latency = PerTokenLatency.load(config.latency_profile) if config.budget == "cost_model" else None
        # Recent steps' per-prompt candidate observations [(length, censored), ...] for the cost-model replay.
        self.history: deque[list[list[tuple[int, bool]]]] = deque(maxlen=config.budget_window)
        self.last_budget = 0
        self.last_budget_mode = config.budget
        self.last_seconds = 0.0

    # ---- planning ---------------------------------------------------------------------------------------------
    def plan(self, prompts: Sequence[str]) -> list[GroupPlan]:
        """One plan per prompt, in order. A batch of one (a dynamic-filtering replacement) gets the average budget."""
        start = time.perf_counter()
        config, n = self.config, self.config.n_samples_per_prompt
        budget = self._budget(len(prompts))
        if config.allocation_active:
            stds = self.stats.weights([prompt_key(p) for p in prompts])
            weights = normalize_weights(stds, config.weight_norm)
            counts = allocate_candidates(weights, budget, config.min_candidates, config.max_candidates)
        else:
            counts = [config.min_candidates] * len(prompts)
        # Tail pruning singles out prompts the allocation saturated; with M_low == M_up nothing was allocated, and
        # every prompt sitting "at the cap" must not turn the whole batch shortest-only.
        schedule = config.tail_prune if config.allocation_active else "off"
        plans = [
            GroupPlan(
                num_candidates=m,
                num_keep=n,
                num_long=num_long_for(m, config.max_candidates, config.num_long, schedule, num_keep=n),
            )
            for m in counts
        ]
        self.last_budget = sum(counts)
        self.last_seconds = time.perf_counter() - start
        return plans

    def _budget(self, num_prompts: int) -> int:
        config = self.config
        if config.budget == "cost_model" and self.history:
            history = [group for step in self.history for group in step]
            choice = utility_budget(
                history,
                num_prompts=num_prompts,
                num_keep=config.n_samples_per_prompt,
                num_long=config.num_long,
                min_candidates=config.min_candidates,
                max_candidates=config.max_candidates,
                cost_weight=config.cost_weight,
                per_token_latency=self.latency,
                num_engines=self.num_engines,
                tail_prune=config.tail_prune,
            )
            self.last_budget_mode = "cost_model"
            return choice.budget
        # Fixed mode, and the first cost-model step (nothing recorded yet to replay).
        self.last_budget_mode = "fixed"
        return fixed_budget(num_prompts, config.avg_candidates, config.min_candidates, config.max_candidates)

    # ---- observing ----------------------------------------------------------------------------------------------
    def observe(self, prompts: Sequence[str], outcomes: Sequence[GroupOutcome]) -> None:
        """Update the per-prompt spread from one step's outcomes (spec 3(d)2: all candidates, censored flagged)."""
        step = []
        for prompt, outcome in zip(prompts, outcomes, strict=True):
            if self.config.stats_source == "kept":
                lengths, censored = list(outcome.kept_lengths), []
            else:
                lengths, censored = list(outcome.lengths), list(outcome.censored)
            self.stats.update(prompt_key(prompt), lengths, censored)
            step.append(list(zip(outcome.lengths, outcome.censored)))
        if step:
            self.history.append(step)

    # ---- checkpoint ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"stats": self.stats.state_dict(), "history": [list(map(list, s)) for s in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.stats.load_state_dict(state["stats"])
        self.history.clear()
        for step in state["history"]:
            self.history.append([[(int(length), bool(c)) for length, c in group] for group in step])
