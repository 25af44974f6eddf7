"""Variance-based allocation of candidates and variance-guided tail pruning (DARTS_SPEC.md §3(d) 3-4 and §3(f)).

Weights come from the smoothed length spread (``normalize_weights``). ``allocate_candidates`` spreads a total of
M_total candidates so that sum_i w_i / M'_i is minimal within [M_low, M_up]. ``num_long_for`` then decides which
prompts turn shortest-only, and ``build_plans`` combines both into one ``GroupPlan`` per prompt.
"""

import heapq
import math
from collections.abc import Sequence

from openrlhf_darts.core._checks import check_choice, check_int, check_real, check_sequence
from openrlhf_darts.core.types import GroupPlan

NORMALIZE_MODES = ("reference", "plain")
TAIL_PRUNE_SCHEDULES = ("paper", "graded", "off")


def normalize_weights(stds: Sequence[float], mode: str = "reference") -> list[float]:
    """Turn smoothed length stds v_i into allocation weights w_i (§3(d) 3).

    ``"reference"`` (the reference code's form): w_i = (v_i - v_min + 1) / (v_max - v_min), or all ones if every v_i is
    equal. ``"plain"``: w_i = v_i. The allocation is invariant to a common positive scale of the weights.
    """
    check_choice("mode", mode, NORMALIZE_MODES)
    values = [check_real(f"stds[{i}]", v, minimum=0.0) for i, v in enumerate(check_sequence("stds", stds))]
    if mode == "plain" or not values:
        return values
    low, high = min(values), max(values)
    if low == high:
        return [1.0] * len(values)
    weights = [(v - low + 1.0) / (high - low) for v in values]
    if not all(math.isfinite(w) for w in weights):
        raise ValueError(
            f"stds spread v_max - v_min = {high - low!r} is so small that the reference weights overflow; "
            "use mode='plain' or round the stds"
        )
    return weights


def allocate_candidates(
    weights: Sequence[float],
    budget: int,
    min_candidates: int,
    max_candidates: int,
    tie_keys: Sequence[str] | None = None,
) -> list[int]:
    """Integers M'_i minimizing sum_i w_i / M'_i with sum_i M'_i = budget and min <= M'_i <= max (§3(d) 4).

    Greedy on the marginal gain w_i / (m (m + 1)); each term is convex and decreasing, so greedy is exactly optimal
    whatever order equal gains are taken in. Equal gains go first to the prompt with fewer candidates, so equal
    weights, zero included, give counts that differ by at most 1; then by ``tie_keys`` (one str per prompt, e.g. a
    hash of the prompt text: the remainder then does not follow batch position), then by index. O(B log N) with a
    heap, where B = budget - N * min_candidates.
    """
    values = [check_real(f"weights[{i}]", w, minimum=0.0) for i, w in enumerate(check_sequence("weights", weights))]
    if not values:
        raise ValueError("weights=[] is empty; expected one weight per prompt")
    if tie_keys is None:
        ties: Sequence[str | int] = range(len(values))
    else:
        check_sequence("tie_keys", tie_keys)
        if len(tie_keys) != len(values):
            raise ValueError(
                f"tie_keys has {len(tie_keys)} entries but weights has {len(values)}; expected one key per prompt"
            )
        for i, key in enumerate(tie_keys):
            if not isinstance(key, str):
                raise TypeError(f"tie_keys[{i}]={key!r} has type {type(key).__name__}; expected a str")
        ties = tie_keys
    check_int("budget", budget)
    check_int("min_candidates", min_candidates, minimum=1)
    check_int("max_candidates", max_candidates)
    if min_candidates > max_candidates:
        raise ValueError(
            f"min_candidates={min_candidates} exceeds max_candidates={max_candidates}; "
            "set min_candidates <= max_candidates"
        )
    num_prompts = len(values)
    low, high = num_prompts * min_candidates, num_prompts * max_candidates
    if not low <= budget <= high:
        raise ValueError(
            f"budget={budget} is outside [num_prompts*min_candidates, num_prompts*max_candidates] = "
            f"[{num_prompts}*{min_candidates}, {num_prompts}*{max_candidates}] = [{low}, {high}]; "
            "choose a budget inside that range"
        )
    counts = [min_candidates] * num_prompts
    if min_candidates == max_candidates:
        return counts
    # heapq is a min-heap: store the negated gain; equal gains then pop the fewest candidates, then the smallest key.
    heap = [(-w / (min_candidates * (min_candidates + 1)), min_candidates, ties[i], i) for i, w in enumerate(values)]
    heapq.heapify(heap)
    for _ in range(budget - low):
        _, _, tie, i = heapq.heappop(heap)
        counts[i] += 1
        m = counts[i]
        if m < max_candidates:
            heapq.heappush(heap, (-values[i] / (m * (m + 1)), m, tie, i))
    return counts


def num_long_for(
    num_candidates: int,
    max_candidates: int,
    num_long: int,
    schedule: str = "paper",
    num_keep: int | None = None,
) -> int:
    """L_i for a prompt given M'_i (§3(f)).

    ``"paper"``: 0 (shortest-only) iff M'_i = M_up, else ``num_long``. With min_candidates == max_candidates every
    prompt sits at the cap, so every group turns shortest-only; use ``"off"`` for uniform dual-end groups.
    ``"graded"`` (the reference code's DAPO schedule): max((M_up - M'_i) // 2, 0), at most num_keep - 1 when num_keep
    is given; it ignores ``num_long``. ``"off"``: ``num_long`` always.
    """
    check_choice("schedule", schedule, TAIL_PRUNE_SCHEDULES)
    check_int("num_candidates", num_candidates, minimum=1)
    check_int("max_candidates", max_candidates)
    check_int("num_long", num_long, minimum=0)
    if num_candidates > max_candidates:
        raise ValueError(
            f"num_candidates={num_candidates} exceeds max_candidates={max_candidates}; "
            "an allocation never exceeds max_candidates"
        )
    if num_keep is not None:
        check_int("num_keep", num_keep, minimum=1)
        if num_long >= num_keep:
            raise ValueError(
                f"num_long={num_long} is not below num_keep={num_keep}; expected 0 <= num_long < num_keep"
            )
    if schedule == "paper":
        return 0 if num_candidates == max_candidates else num_long
    if schedule == "graded":
        graded = max((max_candidates - num_candidates) // 2, 0)
        return graded if num_keep is None else min(graded, num_keep - 1)
    return num_long


def build_plans(
    weights: Sequence[float],
    budget: int,
    num_keep: int,
    num_long: int,
    min_candidates: int,
    max_candidates: int,
    tail_prune: str = "paper",
    tie_keys: Sequence[str] | None = None,
) -> list[GroupPlan]:
    """One ``GroupPlan`` per prompt: ``allocate_candidates`` for M'_i, then ``num_long_for`` for L_i (§3(d), (f)).

    The planner and the cost-model budget's replay both build their plans here, so the replay sees the plan that runs.
    """
    check_int("num_keep", num_keep, minimum=1)
    check_int("min_candidates", min_candidates)
    check_choice("tail_prune", tail_prune, TAIL_PRUNE_SCHEDULES)
    if min_candidates < num_keep:
        raise ValueError(
            f"min_candidates={min_candidates} is below num_keep={num_keep}; every prompt needs at least num_keep "
            "candidates (the paper uses min_candidates = num_keep)"
        )
    counts = allocate_candidates(weights, budget, min_candidates, max_candidates, tie_keys)
    return [
        GroupPlan(m, num_keep, num_long_for(m, max_candidates, num_long, tail_prune, num_keep=num_keep))
        for m in counts
    ]
