"""Replay one rollout step through the cost model: plans, engine assignment, per-engine time, step time.

A step of N prompts runs on E engines:

1. **Plans** (``plan_batch``), one ``GroupPlan`` per prompt:
   - ``baseline``: upstream, n candidates, all kept;
   - ``dual_end``: uniform redundancy, ceil(1.25 n) candidates, L = 1 (every candidate runs to its end);
   - ``shortest_only``: uniform redundancy, ceil(1.5 n) candidates, L = 0 (early abort);
   - ``adaptive``: ``core.allocation`` with LengthStats weights: v_i is the censored fit's std of a previous rollout of
     the prompt (ceil(1.25 n) fresh draws, as one uniform dual-end epoch would record), weights by the reference
     normalisation, budget round(1.25 n N) within [n, 2n], the paper's tail pruning (M'_i = 2n -> L_i = 0, else 1).
2. **Assignment** (``assign_engines``): the samples generator's least-loaded rule: a heap of (load, engine) starting at
   zero, each prompt in order to the least-loaded engine (ties: lowest index), whose load grows by M'_i.
3. **Time**: each candidate decodes its effective length (``core.cost_model.effective_lengths``: shortest-only groups
   stop at the n-th shortest valid length), an engine's time is ``core.cost_model.rollout_time`` over all its
   candidates, and the step takes the slowest engine's time.
4. **Kept**: ``core.selection.select_dual_end``. Both steps 3 and 4 follow ``truncated_rule`` (``--truncated``, as
   ``--darts.truncated``): with ``long_end`` a dual-end group keeps truncated candidates as its long end and a
   shortest-only group stops after its first n stops of any kind (with truncation at the cap, the same decode time).

Candidates are common random numbers: every variant uses the first M'_i of the same 2n draws per prompt, so the
variants differ by their plans only. Assumed, as in the paper's model: all of an engine's candidates start together and
fit its KV cache; prefill, context-length effects and scheduling gaps are ignored.
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from openrlhf_darts.core._checks import check_choice
from openrlhf_darts.core.allocation import build_plans, normalize_weights
from openrlhf_darts.core.budget import fixed_budget
from openrlhf_darts.core.cost_model import effective_lengths, rollout_time
from openrlhf_darts.core.length_fit import group_cap
from openrlhf_darts.core.length_stats import LengthStats
from openrlhf_darts.core.selection import select_dual_end
from openrlhf_darts.core.types import TRUNCATED_RULES, GroupPlan
from openrlhf_darts.sim.traces import Candidate, sample_batch

VARIANTS = ("baseline", "dual_end", "shortest_only", "adaptive")
UNIFORM_DUAL_END = 1.25  # candidates per kept sample: the bench's dual-end variant and the paper's default budget
UNIFORM_SHORTEST = 1.5


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(
            f"n={n!r} is below 2; dual-end keeps n-1 short + 1 long, so it needs n >= 2 (the paper uses 8)"
        )


def assign_engines(num_candidates: Sequence[int], num_engines: int) -> list[int]:
    """Engine index per prompt by the samples generator's least-loaded rule (module docstring, step 2)."""
    if isinstance(num_engines, bool) or not isinstance(num_engines, int) or num_engines < 1:
        raise ValueError(f"num_engines={num_engines!r} is not a positive int")
    heap = [(0, engine) for engine in range(num_engines)]
    assignment = []
    for m in num_candidates:
        load, engine = heapq.heappop(heap)
        assignment.append(engine)
        heapq.heappush(heap, (load + m, engine))
    return assignment


def plan_batch(
    variant: str, n: int, num_prompts: int, history: Sequence[Sequence[Candidate]] | None = None
) -> list[GroupPlan]:
    """One plan per prompt for ``variant`` (module docstring, step 1); ``adaptive`` needs each prompt's history."""
    _check_n(n)
    if variant != "adaptive":
        return [uniform_plan(variant, n)] * num_prompts
    if history is None or len(history) != num_prompts:
        raise ValueError("variant 'adaptive' needs a history: one earlier rollout's candidates per prompt")
    stats = LengthStats(alpha=0.3)
    keys = [str(i) for i in range(len(history))]
    for key, group in zip(keys, history):
        # As the planner observes a dual-end group: truncated candidates are censored at their cap.
        lengths, truncated = [length for length, _ in group], [cut for _, cut in group]
        stats.update(key, lengths, truncated, cap=group_cap(lengths, truncated))
    weights = normalize_weights(stats.weights(keys), "reference")
    budget = fixed_budget(len(keys), UNIFORM_DUAL_END * n, n, 2 * n)
    return build_plans(weights, budget, n, 1, n, 2 * n, tail_prune="paper")


def uniform_plan(variant: str, n: int) -> GroupPlan:
    if variant == "baseline":
        return GroupPlan.uniform(n)
    if variant == "dual_end":
        return GroupPlan(math.ceil(UNIFORM_DUAL_END * n), n, 1)
    if variant == "shortest_only":
        return GroupPlan(math.ceil(UNIFORM_SHORTEST * n), n, 0)
    raise ValueError(f"variant={variant!r} is not one of {list(VARIANTS)}")


@dataclass(frozen=True)
class StepResult:
    """One simulated step of one variant."""

    rollout_time_s: float  # the slowest engine's cost-model time
    engine_times_s: tuple[float, ...]  # [E]
    decode_steps: int  # the longest effective length of any candidate
    tokens_generated: int  # sum of effective lengths
    tokens_kept: int
    kept_length_mean: float
    candidates_mean: float
    early_stop_ratio: float  # share of groups that may stop early: L = 0 and more candidates than kept

    @property
    def tokens_wasted(self) -> int:
        return self.tokens_generated - self.tokens_kept


def simulate_step(
    candidates: Sequence[Sequence[Candidate]],
    plans: Sequence[GroupPlan],
    num_engines: int,
    latency: Callable[[int], float],
    truncated_rule: str = "exclude",
) -> StepResult:
    """Replay one step: prompt i uses the first ``plans[i].num_candidates`` of ``candidates[i]`` (module docstring)."""
    if len(candidates) != len(plans) or not plans:
        raise ValueError(
            f"got {len(candidates)} candidate lists and {len(plans)} plans; expected one of each per prompt"
        )
    assignment = assign_engines([plan.num_candidates for plan in plans], num_engines)
    per_engine: list[list[int]] = [[] for _ in range(num_engines)]
    generated = kept_tokens = kept_count = 0
    for i, (group, plan, engine) in enumerate(zip(candidates, plans, assignment)):
        if len(group) < plan.num_candidates:
            raise ValueError(f"prompt {i} has {len(group)} candidates but its plan launches {plan.num_candidates}")
        lengths = [length for length, _ in group[: plan.num_candidates]]
        truncated = [cut for _, cut in group[: plan.num_candidates]]
        effective = effective_lengths(lengths, truncated, plan, truncated_rule)
        kept = select_dual_end(lengths, truncated, plan.num_keep, plan.num_long, truncated_rule)
        per_engine[engine].extend(effective)
        generated += sum(effective)
        kept_tokens += sum(lengths[j] for j in kept)
        kept_count += len(kept)
    times = tuple(rollout_time(lengths, latency) for lengths in per_engine)
    return StepResult(
        rollout_time_s=max(times),
        engine_times_s=times,
        decode_steps=max((max(lengths) for lengths in per_engine if lengths), default=0),
        tokens_generated=generated,
        tokens_kept=kept_tokens,
        kept_length_mean=kept_tokens / kept_count,
        candidates_mean=statistics.fmean(plan.num_candidates for plan in plans),
        early_stop_ratio=sum(p.shortest_only and p.num_candidates > p.num_keep for p in plans) / len(plans),
    )


def simulate(
    prompts: Sequence,
    n: int,
    num_engines: int,
    latency: Callable[[int], float],
    variants: Sequence[str] = VARIANTS,
    repeats: int = 3,
    seed: int = 0,
    truncated_rule: str = "exclude",
) -> dict[str, dict]:
    """Mean figures over ``repeats`` independent steps per variant, plus speedups against the baseline.

    ``prompts`` are length distributions with ``sample(rng, k)`` (``sim.traces``). Each repeat draws 2n candidates and
    a ceil(1.25 n) history per prompt, shared by every variant (common random numbers). ``truncated_rule`` is
    ``--darts.truncated`` (module docstring, steps 3-4).
    """
    _check_n(n)
    check_choice("truncated_rule", truncated_rule, TRUNCATED_RULES)
    for variant in variants:
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r} is not one of {list(VARIANTS)}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats={repeats!r} is not a positive int")
    steps: dict[str, list[StepResult]] = {variant: [] for variant in variants}
    baseline_times = []
    for repeat in range(repeats):
        rng = random.Random(seed * 1_000_003 + repeat)
        candidates = sample_batch(prompts, 2 * n, rng)
        history = sample_batch(prompts, math.ceil(UNIFORM_DUAL_END * n), rng)
        baseline_times.append(
            simulate_step(candidates, [GroupPlan.uniform(n)] * len(prompts), num_engines, latency).rollout_time_s
        )
        for variant in variants:
            plans = plan_batch(variant, n, len(prompts), history)
            steps[variant].append(simulate_step(candidates, plans, num_engines, latency, truncated_rule))
    results = {}
    for variant, runs in steps.items():
        summary = {
            key: statistics.fmean(getattr(run, key) for run in runs)
            for key in (
                "rollout_time_s",
                "decode_steps",
                "tokens_generated",
                "tokens_kept",
                "tokens_wasted",
                "kept_length_mean",
                "candidates_mean",
                "early_stop_ratio",
            )
        }
        summary["speedup"] = statistics.fmean(baseline_times) / summary["rollout_time_s"]
        summary["wasted_share"] = summary["tokens_wasted"] / summary["tokens_generated"]
        summary["steps"] = [asdict(run) for run in runs]
        results[variant] = summary
    return results


def recorded_rollout_time(groups: Sequence[Sequence[int]], latency: Callable[[int], float]) -> float:
    """Cost-model time of one engine that ran these groups' candidates with the recorded lengths (aborted: partial)."""
    return rollout_time([length for group in groups for length in group], latency)
