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
from openrlhf_darts.core.allocation import build_plans, normalize_weights
from openrlhf_darts.core.budget import BudgetChoice, fixed_budget, utility_budget
from openrlhf_darts.core.cost_model import PerTokenLatency
from openrlhf_darts.core.length_fit import fit_lengths, impute_aborted, outcome_cap
from openrlhf_darts.core.length_stats import LengthStats
from openrlhf_darts.core.types import GroupOutcome, GroupPlan

# Version 1 (no "version" key) recorded (length, censored) per candidate in its history, aborted partial lengths mixed
# with finished ones, and LengthStats on the old scale; version 2 records (length, truncated), aborted ones imputed.
STATE_VERSION = 2


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
        # Recent steps' groups for the cost-model replay: per group, every candidate's (length, truncated) as if it had
        # run to its end (aborted candidates imputed from the group's censored fit, spec 3(e)).
        self.history: deque[list[list[tuple[int, bool]]]] = deque(maxlen=config.budget_window)
        self.last_budget = 0
        self.last_budget_mode = config.budget
        self.last_budget_choice: BudgetChoice | None = None  # the cost model's choice in the last plan(), if it chose
        self.last_seconds = 0.0

    # ---- planning ---------------------------------------------------------------------------------------------
    def plan(self, prompts: Sequence[str]) -> list[GroupPlan]:
        """One plan per prompt, in order. A batch of one (a dynamic-filtering replacement) gets the average budget.

        Equal weights (the first step, unseen prompts) tie; their remainder goes by prompt key, not batch position.
        """
        start = time.perf_counter()
        config = self.config
        keys = [prompt_key(p) for p in prompts]
        if config.allocation_active:
            weights = normalize_weights(self.stats.weights(keys), config.weight_norm)
            schedule = config.tail_prune
        else:
            # With M_low == M_up nothing is allocated, and every prompt sitting "at the cap" must not turn the whole
            # batch shortest-only.
            weights, schedule = [1.0] * len(prompts), "off"
        budget = self._budget(weights, keys, schedule)
        plans = build_plans(
            weights,
            budget,
            config.n_samples_per_prompt,
            config.num_long,
            config.min_candidates,
            config.max_candidates,
            schedule,
            tie_keys=keys,
        )
        self.last_budget = budget
        self.last_seconds = time.perf_counter() - start
        return plans

    def _budget(self, weights: list[float], keys: list[str], schedule: str) -> int:
        config = self.config
        self.last_budget_choice = None
        if config.budget == "cost_model" and self.history:
            history = [group for step in self.history for group in step]
            # The replay allocates with this batch's weights and keys and the same schedule, so the plan it scores at
            # each budget is the plan build_plans returns in plan(); it selects and stops groups by --darts.truncated.
            choice = utility_budget(
                history,
                num_prompts=len(weights),
                num_keep=config.n_samples_per_prompt,
                num_long=config.num_long,
                min_candidates=config.min_candidates,
                max_candidates=config.max_candidates,
                cost_weight=config.cost_weight,
                per_token_latency=self.latency,
                num_engines=self.num_engines,
                tail_prune=schedule,
                weights=weights,
                tie_keys=keys,
                truncated_rule=config.truncated,
            )
            self.last_budget_mode = "cost_model"
            self.last_budget_choice = choice
            return choice.budget
        # Fixed mode, and the first cost-model step (nothing recorded yet to replay).
        self.last_budget_mode = "fixed"
        return fixed_budget(len(weights), config.avg_candidates, config.min_candidates, config.max_candidates)

    # ---- observing ----------------------------------------------------------------------------------------------
    def observe(self, prompts: Sequence[str], outcomes: Sequence[GroupOutcome], max_tokens: int | None = None) -> None:
        """Update the per-prompt spread from one step's outcomes (spec 3(d)2: all candidates, censored flagged).

        The censored fit clips at each group's own cap, the ``max_tokens`` the engine recorded in its outcome.
        ``max_tokens`` here only serves records without one (``length_fit.outcome_cap``: saved reports).
        """
        step = []
        for prompt, outcome in zip(prompts, outcomes, strict=True):
            cap = outcome_cap(outcome, max_tokens)
            if self.config.stats_source == "kept":
                self.stats.update(prompt_key(prompt), list(outcome.kept_lengths), [], cap)
            else:
                self.stats.update(prompt_key(prompt), list(outcome.lengths), list(outcome.censored), cap)
            fit = fit_lengths(outcome.lengths, outcome.censored, cap) if any(outcome.aborted) else None
            step.append(impute_aborted(outcome.lengths, outcome.truncated, outcome.aborted, fit))
        if step:
            self.history.append(step)

    # ---- checkpoint ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "stats": self.stats.state_dict(),
            "history": [[[[length, cut] for length, cut in group] for group in step] for step in self.history],
        }

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise TypeError(f"planner state has type {type(state).__name__}; expected a dict from state_dict()")
        if state.get("version") != STATE_VERSION:
            written = (
                "before versions were recorded (version 1)" if "version" not in state else f"as {state['version']!r}"
            )
            raise ValueError(
                f"DARTS planner state was written {written}, but this build reads version {STATE_VERSION}: version 1 "
                "recorded aborted partial lengths as finished in its budget history and smoothed length spreads on a "
                "biased scale (docs/design.md). Resume from a checkpoint written by this version, or drop the "
                "'darts_planner' entry from the checkpoint's client_states to start the statistics afresh"
            )
        self.stats.load_state_dict(state["stats"])
        self.history.clear()
        for step in state["history"]:
            self.history.append([[(int(length), bool(cut)) for length, cut in group] for group in step])
