"""Variance-based allocation (§3(d) 3-4) and variance-guided tail pruning (§3(f))."""

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openrlhf_darts.core.allocation import allocate_candidates, build_plans, normalize_weights, num_long_for
from openrlhf_darts.core.types import GroupPlan

pytestmark = pytest.mark.unit


def objective(weights, counts):
    """sum_i w_i / M'_i, the quantity the allocation minimizes."""
    return sum(w / m for w, m in zip(weights, counts))


@st.composite
def allocation_cases(draw, max_prompts: int, max_low: int, max_span: int, min_weight: float = 0.0):
    """(weights, budget, min_candidates, max_candidates) with a feasible budget.

    Weights come from one byte string (two bytes each, in steps of 1/64 up to 1024) because hypothesis draws bytes
    several times faster than lists of floats; 1,000 examples per property then fit the suite's time budget.
    """
    num_prompts = draw(st.integers(1, max_prompts))
    low = draw(st.integers(1, max_low))
    high = low + draw(st.integers(0, max_span))
    raw = draw(st.binary(min_size=2 * num_prompts, max_size=2 * num_prompts))
    weights = [min_weight + (256 * raw[2 * i] + raw[2 * i + 1]) / 64 for i in range(num_prompts)]
    budget = draw(st.integers(num_prompts * low, num_prompts * high))
    return weights, budget, low, high


# ---- allocate_candidates


def test_hand_example_greedy():
    # Start at [1, 1]. Gains w/(m(m+1)): 4/2 = 2.0 vs 1/2 = 0.5 -> prompt 0 gets [2, 1];
    # then 4/6 = 0.667 vs 0.5 -> prompt 0 again, [3, 1]. Objective 4/3 + 1/1 = 2.333 < 2.5 for [2, 2].
    assert allocate_candidates([4.0, 1.0], budget=4, min_candidates=1, max_candidates=4) == [3, 1]


def test_hand_example_respects_upper_bound():
    # Same weights but max 2: prompt 0 stops at 2 and the last unit goes to prompt 1 -> [2, 2].
    assert allocate_candidates([4.0, 1.0], budget=4, min_candidates=1, max_candidates=2) == [2, 2]


def test_ties_go_to_the_fewest_candidates_then_the_key():
    # Equal weights: each round all gains tie among the least-served prompts, so without keys units go to index 0, 1,
    # 2, 0, ...; with keys to the smallest key first.
    assert allocate_candidates([1.0, 1.0, 1.0], budget=4, min_candidates=1, max_candidates=3) == [2, 1, 1]
    assert allocate_candidates([1.0, 1.0, 1.0], 4, 1, 3, tie_keys=["c", "a", "b"]) == [1, 2, 1]
    # Zero weights give zero gain at every count, so before issue 11 the first prompt took units up to the cap:
    # N = 16 at [8, 16] with budget 160 gave [16, 16, 16, 16, 8, ...]. Fewest-candidates-first balances them.
    assert allocate_candidates([0.0] * 16, 160, 8, 16) == [10] * 16
    assert allocate_candidates([0.0, 0.0], budget=3, min_candidates=1, max_candidates=2) == [2, 1]
    assert allocate_candidates([0.0, 0.0], 3, 1, 2, tie_keys=["z", "y"]) == [1, 2]


def keyed_equal_case(raw: bytes, value: float, low: int, span: int, budget_fraction: float):
    """Equal weights (all ``value``), distinct keys from bytes, a feasible budget."""
    num_prompts = max(1, len(raw) // 2)
    keys = [f"{raw[2 * i: 2 * i + 2].hex()}-{i}" for i in range(num_prompts)]
    high = low + span
    budget = num_prompts * low + round(budget_fraction * num_prompts * span)
    return [value] * num_prompts, keys, budget, low, high


@given(
    st.binary(min_size=2, max_size=64),
    st.sampled_from([0.0, 1.0, 0.37, 1e6]),
    st.integers(1, 8),
    st.integers(0, 8),
    st.floats(0.0, 1.0),
    st.randoms(use_true_random=False),
)
def test_equal_weights_differ_by_at_most_one_and_ignore_batch_position(raw, value, low, span, fraction, rnd):
    weights, keys, budget, low, high = keyed_equal_case(raw, value, low, span, fraction)
    counts = allocate_candidates(weights, budget, low, high, tie_keys=keys)
    assert sum(counts) == budget and max(counts) - min(counts) <= 1
    # Position-free: shuffling the batch (each prompt with its key) permutes the allocation with it.
    order = list(range(len(keys)))
    rnd.shuffle(order)
    shuffled = allocate_candidates([weights[i] for i in order], budget, low, high, tie_keys=[keys[i] for i in order])
    assert shuffled == [counts[i] for i in order]


@given(allocation_cases(max_prompts=32, max_low=16, max_span=16), st.randoms(use_true_random=False))
def test_keyed_allocation_is_permutation_equivariant(case, rnd):
    weights, budget, low, high = case
    keys = [f"k{i:03d}" for i in range(len(weights))]
    rnd.shuffle(keys)
    counts = allocate_candidates(weights, budget, low, high, tie_keys=keys)
    order = list(range(len(weights)))
    rnd.shuffle(order)
    shuffled = allocate_candidates([weights[i] for i in order], budget, low, high, tie_keys=[keys[i] for i in order])
    assert shuffled == [counts[i] for i in order]


@given(allocation_cases(max_prompts=32, max_low=16, max_span=16))
def test_allocation_sums_to_budget_within_bounds(case):
    weights, budget, low, high = case
    counts = allocate_candidates(weights, budget, low, high)
    assert len(counts) == len(weights)
    assert sum(counts) == budget
    assert all(low <= m <= high for m in counts)


@given(allocation_cases(max_prompts=4, max_low=3, max_span=4), st.permutations(["a", "b", "c", "d"]))
def test_greedy_matches_brute_force_on_small_inputs(case, keys):
    weights, budget, low, high = case
    # Any order of equal gains is optimal: with and without tie keys (which reorder ties) the greedy meets brute force.
    keyed = allocate_candidates(weights, budget, low, high, tie_keys=keys[: len(weights)])
    assert sum(keyed) == budget
    greedy = max(objective(weights, allocate_candidates(weights, budget, low, high)), objective(weights, keyed))
    best = min(
        objective(weights, counts)
        for counts in itertools.product(range(low, high + 1), repeat=len(weights))
        if sum(counts) == budget
    )
    # Greedy is exactly optimal; the tolerance only absorbs float rounding in the gains and the sums.
    assert greedy <= best * (1 + 1e-12) + 1e-12


def continuous_optimum(weights, budget, low, high):
    """Real x_i in [low, high] with sum x_i = budget minimizing sum w_i / x_i: x_i = clip(c * sqrt(w_i)) (KKT).

    sum_i clip(c sqrt(w_i)) grows continuously with c from N*low to N*high, so bisection on c finds the budget.
    """
    roots = [math.sqrt(w) for w in weights]

    def spread(c):
        return [min(max(c * r, low), high) for r in roots]

    lo, hi = 0.0, 1.0
    while sum(spread(hi)) < budget:
        hi *= 2
    for _ in range(40):  # 2**-40 of the bracket, far inside the 1e-9 tolerances below
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sum(spread(mid)) < budget else (lo, mid)
    return spread(hi)


@given(allocation_cases(max_prompts=64, max_low=8, max_span=8, min_weight=1e-3))
def test_greedy_is_within_the_continuous_relaxation_bounds(case):
    # F* = F(x*) of the continuous optimum is a lower bound on any integer allocation. Flooring x* and handing the
    # leftover units to the prompts with fractional x*_i is a feasible integer allocation no worse than F(floor(x*)),
    # so the optimum (= greedy) satisfies F* <= G <= F(floor(x*)), and F(floor(x*)) - F* <= F* / min_candidates since
    # w/floor(x) - w/x <= (w/x) / floor(x).
    weights, budget, low, high = case
    x = continuous_optimum(weights, budget, low, high)
    floors = [math.floor(v + 1e-9) for v in x]  # 1e-9 absorbs bisection error just below an integer
    assert sum(floors) <= budget
    lower, upper = objective(weights, x), objective(weights, floors)
    greedy = objective(weights, allocate_candidates(weights, budget, low, high))
    assert lower * (1 - 1e-9) <= greedy <= upper * (1 + 1e-9)
    assert upper <= lower * (1 + 1 / low) * (1 + 1e-9)


@given(allocation_cases(max_prompts=16, max_low=8, max_span=8), st.integers(-30, 30))
def test_allocation_is_invariant_to_a_common_power_of_two_scale(case, exponent):
    # Scaling every weight by 2**k scales every gain exactly (no rounding, no overflow at these sizes), so each greedy
    # comparison is unchanged.
    weights, budget, low, high = case
    scaled = [w * 2.0**exponent for w in weights]
    assert allocate_candidates(scaled, budget, low, high) == allocate_candidates(weights, budget, low, high)


@given(allocation_cases(max_prompts=16, max_low=8, max_span=8))
def test_larger_weight_never_gets_fewer_candidates(case):
    # If w_i > w_j but m_i < m_j, swapping m_i and m_j changes the objective by (w_i - w_j)(1/m_j - 1/m_i) < 0,
    # so an optimal allocation gives the larger weight at least as many candidates. The weights are multiples of 1/64
    # up to 1024, so distinct weights give gains that differ by far more than float rounding.
    weights, budget, low, high = case
    counts = allocate_candidates(weights, budget, low, high)
    for i, j in itertools.combinations(range(len(weights)), 2):
        if weights[i] > weights[j]:
            assert counts[i] >= counts[j]
        elif weights[j] > weights[i]:
            assert counts[j] >= counts[i]


@pytest.mark.parametrize(
    "args, error, message",
    [
        (([1.0, 1.0], 5, 3, 4), ValueError, "budget=5 is outside"),
        (([1.0, 1.0], 9, 3, 4), ValueError, "[2*3, 2*4] = [6, 8]"),
        (([], 4, 1, 2), ValueError, "weights=[] is empty"),
        (([1.0, float("nan")], 4, 1, 2), ValueError, "weights[1]=nan is not finite"),
        (([1.0, float("inf")], 4, 1, 2), ValueError, "weights[1]=inf is not finite"),
        (([1.0, -0.5], 4, 1, 2), ValueError, "weights[1]=-0.5 is below 0.0"),
        (([1.0, True], 4, 1, 2), TypeError, "weights[1]=True"),
        (([1.0], 1, 0, 2), ValueError, "min_candidates=0 is below 1"),
        (([1.0], 3, 4, 2), ValueError, "min_candidates=4 exceeds max_candidates=2"),
        (([1.0], 3.0, 1, 4), TypeError, "budget=3.0"),
        (([1.0, 1.0], 3, 1, 2, ["a"]), ValueError, "tie_keys has 1 entries but weights has 2"),
        (([1.0, 1.0], 3, 1, 2, ["a", 7]), TypeError, "tie_keys[1]=7 has type int"),
        (([1.0], 1, 1, 2, "a"), TypeError, "tie_keys='a' has type str"),
    ],
)
def test_allocate_rejects_bad_input(args, error, message):
    with pytest.raises(error) as info:
        allocate_candidates(*args)
    assert message in str(info.value)


# ---- normalize_weights


def test_hand_example_reference_normalization():
    # v = [2, 4, 6]: v_min = 2, v_max - v_min = 4; w = (0+1)/4, (2+1)/4, (4+1)/4 = 0.25, 0.75, 1.25.
    assert normalize_weights([2.0, 4.0, 6.0]) == [0.25, 0.75, 1.25]
    assert normalize_weights([3.0, 3.0]) == [1.0, 1.0]  # every v equal -> all ones
    assert normalize_weights([2.0, 4.0, 6.0], mode="plain") == [2.0, 4.0, 6.0]
    assert normalize_weights([]) == []


@given(st.binary(min_size=3, max_size=48), st.integers(0, 10**6))
def test_reference_normalization_is_shift_invariant_and_order_preserving(raw, shift):
    # Integer-valued stds below 2**53 subtract exactly, so (v + c) - (v_min + c) == v - v_min bit for bit.
    # Three bytes per std (0 .. 2**24 - 1), because hypothesis draws bytes several times faster than lists of ints.
    stds = [int.from_bytes(raw[i : i + 3], "big") for i in range(0, len(raw) - 2, 3)]
    weights = normalize_weights([float(v) for v in stds])
    assert normalize_weights([float(v + shift) for v in stds]) == weights
    for i, j in itertools.combinations(range(len(stds)), 2):
        assert (stds[i] < stds[j]) == (weights[i] < weights[j])
    if len(set(stds)) > 1:
        spread = max(stds) - min(stds)
        # The calmest prompt gets 1/spread and the noisiest (spread + 1)/spread.
        assert min(weights) == 1 / spread and max(weights) == (spread + 1) / spread


@given(st.lists(st.floats(0.0, 1e6), max_size=8))
def test_plain_normalization_is_the_identity(stds):
    assert normalize_weights(stds, mode="plain") == stds


@pytest.mark.parametrize(
    "args, error, message",
    [
        (([1.0, float("nan")],), ValueError, "stds[1]=nan is not finite"),
        (([1.0, float("inf")],), ValueError, "stds[1]=inf is not finite"),
        (([1.0, -1.0],), ValueError, "stds[1]=-1.0 is below 0.0"),
        (([1.0], "sqrt"), ValueError, "mode='sqrt' is not one of ['reference', 'plain']"),
        (([0.0, 5e-324],), ValueError, "overflow"),
    ],
)
def test_normalize_rejects_bad_input(args, error, message):
    with pytest.raises(error) as info:
        normalize_weights(*args)
    assert message in str(info.value)


# ---- tail pruning


def test_paper_schedule_prunes_only_at_the_cap():
    assert num_long_for(16, max_candidates=16, num_long=1) == 0  # saturated at M_up -> shortest-only
    assert num_long_for(15, max_candidates=16, num_long=1) == 1
    assert num_long_for(8, max_candidates=16, num_long=2, schedule="off") == 2
    assert num_long_for(16, max_candidates=16, num_long=2, schedule="off") == 2


def test_graded_schedule_matches_the_reference_table():
    # Reference DAPO variant, M_up = 16: L = max((16 - M') // 2, 0): 10 -> 3, 11-12 -> 2, 13-14 -> 1, 15-16 -> 0.
    table = {10: 3, 11: 2, 12: 2, 13: 1, 14: 1, 15: 0, 16: 0}
    assert {m: num_long_for(m, 16, num_long=1, schedule="graded") for m in table} == table
    # With num_keep = 2 the graded L is clipped to num_keep - 1 = 1: (16 - 8) // 2 = 4 -> 1.
    assert num_long_for(8, 16, num_long=1, schedule="graded", num_keep=2) == 1


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        ((17, 16, 1), {}, ValueError, "num_candidates=17 exceeds max_candidates=16"),
        ((8, 16, 1), dict(schedule="sometimes"), ValueError, "schedule='sometimes' is not one of"),
        ((8, 16, -1), {}, ValueError, "num_long=-1 is below 0"),
        ((8, 16, 8), dict(num_keep=8), ValueError, "num_long=8 is not below num_keep=8"),
        ((0, 16, 1), {}, ValueError, "num_candidates=0 is below 1"),
    ],
)
def test_num_long_for_rejects_bad_input(args, kwargs, error, message):
    with pytest.raises(error) as info:
        num_long_for(*args, **kwargs)
    assert message in str(info.value)


def test_hand_example_build_plans():
    # Weights [4, 1], budget 6, bounds [2, 4]: start [2, 2]; gains 4/6 = 0.667 vs 1/6 = 0.167 -> [3, 2];
    # then 4/12 = 0.333 vs 0.167 -> [4, 2]. Prompt 0 sits at M_up = 4 -> shortest-only under the paper rule.
    plans = build_plans([4.0, 1.0], budget=6, num_keep=2, num_long=1, min_candidates=2, max_candidates=4)
    assert plans == [GroupPlan(4, 2, 0), GroupPlan(2, 2, 1)]
    off = build_plans([4.0, 1.0], 6, 2, 1, 2, 4, tail_prune="off")
    assert off == [GroupPlan(4, 2, 1), GroupPlan(2, 2, 1)]


@given(allocation_cases(max_prompts=32, max_low=8, max_span=8), st.sampled_from(["paper", "graded", "off"]))
def test_build_plans_agrees_with_its_parts(case, schedule):
    weights, budget, low, high = case
    num_keep = 1 + low // 2  # num_keep <= min_candidates
    keys = [f"{i * 7919 % 101:03d}-{i}" for i in range(len(weights))]
    plans = build_plans(weights, budget, num_keep, num_keep - 1, low, high, tail_prune=schedule, tie_keys=keys)
    counts = allocate_candidates(weights, budget, low, high, tie_keys=keys)
    assert [p.num_candidates for p in plans] == counts
    assert [p.num_long for p in plans] == [num_long_for(m, high, num_keep - 1, schedule, num_keep) for m in counts]
    assert all(p.num_keep == num_keep for p in plans)


def test_build_plans_rejects_min_below_num_keep():
    with pytest.raises(ValueError, match="min_candidates=6 is below num_keep=8"):
        build_plans([1.0], budget=8, num_keep=8, num_long=1, min_candidates=6, max_candidates=16)
