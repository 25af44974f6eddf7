"""The candidate budget M_total of §3(e): fixed mode and the utility argmax U = E - λ·T."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openrlhf_darts.core.allocation import build_plans, normalize_weights
from openrlhf_darts.core.budget import BudgetChoice, draw_replay, fixed_budget, replay_budget, utility_budget
from openrlhf_darts.core.cost_model import rollout_time
from openrlhf_darts.core.types import GroupPlan

pytestmark = pytest.mark.unit


def one_plus_r(num_running):
    """PTL(r) = 1 + r: strictly increasing, with round numbers for hand arithmetic."""
    return 1.0 + num_running


def linear(num_running):
    return 0.010 + 0.001 * num_running


# ---- fixed


def test_hand_example_fixed_budget():
    assert fixed_budget(10, 10, 8, 16) == 100  # 10 * 10
    assert fixed_budget(4, 12.25, 8, 16) == 49  # 12.25 * 4 = 49.0
    assert fixed_budget(2, 8.25, 8, 16) == 16  # 8.25 * 2 = 16.5, Python's round() goes to the even 16
    assert fixed_budget(3, 16, 8, 16) == 48  # avg at the upper bound is allowed: 3 * 16


@pytest.mark.parametrize(
    "args, error, message",
    [
        ((10, 7, 8, 16), ValueError, "--darts.avg_candidates=7 is outside"),
        ((10, 16.5, 8, 16), ValueError, "[--darts.min_candidates, --darts.max_candidates] = [8, 16]"),
        ((10, float("nan"), 8, 16), ValueError, "--darts.avg_candidates=nan is not finite"),
        ((10, 10, 12, 8), ValueError, "min_candidates=12 exceeds max_candidates=8"),
        ((0, 10, 8, 16), ValueError, "num_prompts=0 is below 1"),
    ],
)
def test_fixed_budget_rejects_bad_input(args, error, message):
    with pytest.raises(error) as info:
        fixed_budget(*args)
    assert message in str(info.value)


# ---- utility


def test_hand_example_utility_budget_one_engine():
    # Every recorded length is 3, so E = 0 everywhere and every candidate decodes exactly 3 steps.
    # Baseline M = 2 for N = 2 prompts: 4 sequences, T = 3 * PTL(4) = 3 * 5 = 15.
    # Budget B in 4..8 runs B sequences: T = 3 * (1 + B), ratio (1 + B) / 5 = 1.0, 1.2, 1.4, 1.6, 1.8.
    # U = 0 - 1 * ratio, so the cheapest budget B = 4 (average 2.0) wins with U = -1.
    choice = utility_budget(
        [[(3, False), (3, False)]], num_prompts=2, num_keep=2, num_long=1, min_candidates=2, max_candidates=4,
        cost_weight=1.0, per_token_latency=one_plus_r, tail_prune="off",
    )  # fmt: skip
    assert (choice.budget, choice.avg_candidates, choice.effectiveness, choice.time_ratio) == (4, 2.0, 0.0, 1.0)
    assert choice.utility == -1.0
    assert [avg for avg, _ in choice.grid] == [2.0, 2.5, 3.0, 3.5, 4.0]
    assert [u for _, u in choice.grid] == pytest.approx([-1.0, -1.2, -1.4, -1.6, -1.8])


def test_hand_example_utility_budget_takes_the_slowest_engine():
    # Same data, 2 engines, each prompt to the least-loaded engine (prompt 0 -> engine 0, prompt 1 -> engine 1),
    # bounds [2, 3].
    # Baseline: each engine runs 2 sequences of 3 tokens: 3 * PTL(2) = 9; the step takes max(9, 9) = 9.
    # B = 4: same, ratio 1. B = 5: allocation [3, 2] (tie -> smallest index), engine 0 runs 3 sequences:
    # 3 * PTL(3) = 12, the step takes max(12, 9) = 12, ratio 12 / 9 = 4/3. B = 6: [3, 3], both 12, ratio 4/3.
    choice = utility_budget(
        [[(3, False)]], num_prompts=2, num_keep=2, num_long=1, min_candidates=2, max_candidates=3,
        cost_weight=1.0, per_token_latency=one_plus_r, num_engines=2, tail_prune="off",
    )  # fmt: skip
    assert choice.budget == 4 and choice.time_ratio == 1.0
    assert [u for _, u in choice.grid] == pytest.approx([-1.0, -4 / 3, -4 / 3])


def decode_history(raw: bytes):
    """Per recorded prompt, 1-6 candidates with lengths 1-40 and no truncation, decoded from bytes (as in
    test_selection)."""
    history, pos = [], 0
    while pos < len(raw):
        size = 1 + raw[pos] % 6
        history.append([(1 + b % 40, False) for b in raw[pos + 1 : pos + 1 + size]] or [(1, False)])
        pos += 1 + size
    return history or [[(1, False)]]


histories = st.binary(max_size=24).map(decode_history)


@given(histories, st.integers(1, 3), st.integers(2, 3), st.integers(0, 3), st.integers(0, 2**16))
def test_huge_cost_weight_picks_the_smallest_budget(history, num_prompts, num_keep, span, seed):
    # All groups dual-end (L = 1, no pruning) and all lengths >= 1: one more candidate adds a running sequence on
    # every step of its decode, and PTL strictly increases, so T strictly grows with the budget. With λ = 1e9 the
    # time term dominates any E in [-40, 1].
    choice = utility_budget(
        history, num_prompts, num_keep, 1, num_keep, num_keep + span, 1e9, linear, tail_prune="off", draws=2,
        seed=seed,
    )  # fmt: skip
    assert choice.budget == num_prompts * num_keep
    utilities = [u for _, u in choice.grid]
    assert all(a > b for a, b in zip(utilities, utilities[1:]))


@given(histories, st.integers(1, 3), st.integers(1, 3), st.integers(0, 3), st.sampled_from(["paper", "off"]))
def test_zero_cost_weight_picks_the_budget_maximizing_effectiveness(history, num_prompts, num_keep, span, schedule):
    # Shortest-only groups (num_long = 0; "graded" is excluded because it sets L from M'_i and ignores num_long)
    # without truncation keep the num_keep shortest of their candidates. One more
    # candidate (greedy allocation adds exactly one unit per budget step, and draws are shared across budgets) can
    # only lower that set's sum, so E is non-decreasing in the budget and U = E when λ = 0.
    choice = utility_budget(
        history, num_prompts, num_keep, 0, num_keep, num_keep + span, 0.0, linear, tail_prune=schedule, draws=3
    )
    utilities = [u for _, u in choice.grid]
    assert all(a <= b for a, b in zip(utilities, utilities[1:]))
    assert choice.utility == choice.effectiveness == max(utilities)
    assert choice.avg_candidates == choice.grid[utilities.index(max(utilities))][0]  # ties -> the smaller budget


@given(histories, st.floats(0.0, 10.0), st.integers(1, 3), st.sampled_from(["paper", "graded", "off"]))
def test_choice_is_consistent(history, cost_weight, num_engines, schedule):
    choice = utility_budget(history, 3, 2, 1, 2, 4, cost_weight, linear, num_engines, schedule, draws=2)
    # The choice is the grid's argmax, ties to the smaller budget (U = E - lambda T itself is checked against
    # hand-computed grids above).
    utilities = [u for _, u in choice.grid]
    assert (choice.avg_candidates, choice.utility) == choice.grid[utilities.index(max(utilities))]
    assert choice.budget == round(choice.avg_candidates * 3) and 6 <= choice.budget <= 12


def test_a_fixed_seed_reproduces_the_choice():
    history = [[(5, False), (9, False), (30, True)], [(2, False), (40, False)]]
    runs = [utility_budget(history, 4, 2, 1, 2, 4, 0.3, linear, num_engines=2, seed=7) for _ in range(2)]
    assert runs[0] == runs[1]


def test_grid_is_thinned_to_64_points_with_both_ends():
    # N = 100 and bounds [8, 16] give 801 budgets in steps of 1/N; the grid keeps 64, from 8.0 to 16.0.
    choice = utility_budget([[(5, False), (9, False)]], 100, 8, 1, 8, 16, 0.1, linear, draws=1)
    averages = [avg for avg, _ in choice.grid]
    assert len(averages) == 64 and averages[0] == 8.0 and averages[-1] == 16.0
    assert all(a < b for a, b in zip(averages, averages[1:]))


def test_all_zero_lengths_cost_the_same_everywhere():
    # Nothing to shorten (E = 0) and nothing to decode (T = 0, ratio taken as 1): U = -λ at every budget.
    choice = utility_budget([[(0, False)]], 2, 2, 1, 2, 3, 0.5, linear)
    assert choice.budget == 4 and [u for _, u in choice.grid] == [-0.5, -0.5, -0.5]


@pytest.mark.parametrize(
    "changes, error, message",
    [
        (dict(cost_weight=-1.0), ValueError, "cost_weight=-1.0 is below 0.0"),
        (dict(cost_weight=float("inf")), ValueError, "cost_weight=inf is not finite"),
        (dict(history=[]), ValueError, "history=[] is empty"),
        (dict(history=[[(3, False)], []]), ValueError, "history[1]=[] is empty"),
        (dict(history=[[(3, False), (-1, False)]]), ValueError, "history[0][1] length=-1 is below 0"),
        (dict(history=[[(3, 0)]]), TypeError, "history[0][0] truncated=0"),
        (dict(history=[[(3, False, 1)]]), ValueError, "history[0][0]=(3, False, 1) has 3 entries"),
        (dict(min_candidates=1), ValueError, "min_candidates=1 is below num_keep=2"),
        (dict(num_long=2), ValueError, "num_long=2 is not below num_keep=2"),
        (dict(per_token_latency=0.01), TypeError, "per_token_latency=0.01 is not callable"),
        (dict(num_engines=0), ValueError, "num_engines=0 is below 1"),
        (dict(draws=0), ValueError, "draws=0 is below 1"),
        (dict(tail_prune="never"), ValueError, "tail_prune='never' is not one of ['paper', 'graded', 'off']"),
        (dict(max_candidates=1), ValueError, "min_candidates=2 exceeds max_candidates=1"),
    ],
)
def test_utility_budget_rejects_bad_input(changes, error, message):
    kwargs = dict(
        history=[[(3, False), (5, False)]], num_prompts=2, num_keep=2, num_long=1, min_candidates=2, max_candidates=4,
        cost_weight=0.5, per_token_latency=linear,
    )  # fmt: skip
    with pytest.raises(error) as info:
        utility_budget(**{**kwargs, **changes})
    assert message in str(info.value)


def test_budget_choice_is_validated():
    plans = (GroupPlan(2, 2, 0), GroupPlan(2, 2, 0))
    with pytest.raises(ValueError, match="grid=()"):
        BudgetChoice(4, 2.0, -1.0, 0.0, 1.0, grid=(), plans=plans, rollout_time_s=1.0, kept_length_mean=3.0)
    with pytest.raises(ValueError, match="utility=nan is not finite"):
        BudgetChoice(
            4, 2.0, float("nan"), 0.0, 1.0, grid=((2.0, -1.0),), plans=plans, rollout_time_s=1.0, kept_length_mean=3.0
        )
    with pytest.raises(ValueError, match="plans hold 4 candidates but budget=5"):
        BudgetChoice(
            5, 2.5, -1.0, 0.0, 1.0, grid=((2.5, -1.0),), plans=plans, rollout_time_s=1.0, kept_length_mean=3.0
        )


# ---- the replay scores the plan that will run (issue 11, item 4)


def independent_step_time(samples, plans, num_engines, per_token_latency, truncated_rule="exclude"):
    """Mean over draws of the slowest engine's T, written from the spec: prompts go in order to the engine with the
    fewest candidates so far (ties: lowest index); dual-end groups run to their end. A shortest-only group's candidates
    decode up to its release length: under "exclude" the num_keep-th shortest untruncated length (all run fully with
    fewer valid); under "long_end" the step at which its num_keep-th candidate stops, truncated or not, every candidate
    advancing one token per step (lockstep)."""
    loads, engine_of = [0] * num_engines, []
    for plan in plans:
        engine = min(range(num_engines), key=lambda e: (loads[e], e))
        engine_of.append(engine)
        loads[engine] += plan.num_candidates
    total = 0.0
    for drawn in samples:
        pooled = [[] for _ in range(num_engines)]
        for p, plan in enumerate(plans):
            group = drawn[p][: plan.num_candidates]
            release = None
            if plan.num_long == 0 and truncated_rule == "long_end":
                step = 0
                while sum(length <= step for length, _ in group) < plan.num_keep:
                    step += 1
                release = step
            elif plan.num_long == 0:
                valid = sorted(length for length, cut in group if not cut)
                release = valid[plan.num_keep - 1] if len(valid) >= plan.num_keep else None
            pooled[engine_of[p]] += [length if release is None else min(length, release) for length, _ in group]
        total += max(rollout_time(lengths, per_token_latency) for lengths in pooled)
    return total / len(samples)


def test_replay_predicts_the_time_of_the_plan_that_runs():
    # One draw, one recorded group per prompt, each already completed (the cap 200 truncated one candidate).
    samples = [
        [
            [(200, True), (50, False), (30, False), (10, False)],  # prompt 0: the widest
            [(20, False), (22, False), (24, False), (26, False)],
            [(60, False), (45, False), (40, False), (5, False)],
            [(15, False), (16, False), (17, False), (18, False)],
        ]
    ]
    weights = normalize_weights([80.0, 3.0, 20.0, 1.0])  # reference form: (v - 1 + 1) / 79
    keys = ["d41d", "8f00", "b204", "e980"]
    kwargs = dict(
        num_keep=2, num_long=1, min_candidates=2, max_candidates=4, per_token_latency=linear, num_engines=2,
        tail_prune="paper", tie_keys=keys,
    )  # fmt: skip
    budgets = set()
    for batch_weights in (weights, [1.0] * 4, [0.0] * 4):
        for cost_weight in (0.0, 1.0, 100.0):
            choice = replay_budget(samples, cost_weight=cost_weight, weights=batch_weights, **kwargs)
            budgets.add(choice.budget)
            # The replayed plan is the planner's own build_plans call with the same weights, budget and keys ...
            assert list(choice.plans) == build_plans(batch_weights, choice.budget, 2, 1, 2, 4, "paper", keys)
            # ... and its predicted T is the cost model over that plan and those lengths.
            expected = independent_step_time(samples, choice.plans, 2, linear)
            assert choice.rollout_time_s == pytest.approx(expected, rel=1e-12)
    assert budgets == {12, 16}  # precondition: more than one plan was checked
    # Tail pruning shows up: with lambda = 0 the budget 12 wins, prompts 0 and 2 sit at M_up = 4 and run
    # shortest-only (prompt 0 released at its 2nd shortest valid length, 30: effective lengths 30, 30, 30, 10).
    choice = replay_budget(samples, cost_weight=0.0, weights=weights, **kwargs)
    assert choice.budget == 12
    assert [(p.num_candidates, p.num_long) for p in choice.plans] == [(4, 0), (2, 1), (4, 0), (2, 1)]
    # The even spread the replay used before issue 11 scores [3, 3, 3, 3], all dual-end, at that budget: not the plan
    # that runs.
    assert [p.num_long for p in build_plans([1.0] * 4, 12, 2, 1, 2, 4, "paper")] == [1, 1, 1, 1]


# One draw, one recorded group per prompt, every group under the cap 100 with one truncated candidate.
CAPPED = [
    [
        [(100, True), (50, False), (30, False), (10, False)],
        [(20, False), (100, True), (24, False), (26, False)],
        [(60, False), (45, False), (100, True), (5, False)],
        [(15, False), (16, False), (17, False), (100, True)],
    ]
]


def test_replay_under_long_end_keeps_truncated_candidates_as_the_long_end():
    # M'_i = 3 for every prompt, L = 1 (tail pruning off): every group runs to its end under either rule, so T is the
    # same, but the kept sets differ. Each group's first 3 candidates, keeping the shortest and the longest:
    #   exclude (untruncated only): p0 30 + 50 = 80, p1 20 + 24 = 44, p2 45 + 60 = 105, p3 15 + 17 = 32 -> 261 / 8
    #   long_end (truncated longest): p0 30 + 100 = 130, p1 20 + 100 = 120, p2 45 + 100 = 145, p3 32 -> 427 / 8
    # The baseline M'_i = M = 2 keeps the first two of each: 150 + 120 + 105 + 31 = 406, mean 50.75.
    kwargs = dict(
        num_keep=2, num_long=1, min_candidates=3, max_candidates=3, per_token_latency=linear, num_engines=2,
        tail_prune="off", cost_weight=0.0,
    )  # fmt: skip
    first_three = [[group[:3] for group in CAPPED[0]]]
    for rule, kept_mean in (("exclude", 261 / 8), ("long_end", 427 / 8)):
        choice = replay_budget(first_three, truncated_rule=rule, **kwargs)
        assert choice.budget == 12 and all(plan == GroupPlan(3, 2, 1) for plan in choice.plans)
        assert choice.kept_length_mean == pytest.approx(kept_mean, rel=1e-12)
        assert choice.effectiveness == pytest.approx((50.75 - kept_mean) / 50.75, rel=1e-12)
        assert choice.rollout_time_s == pytest.approx(
            independent_step_time(first_three, choice.plans, 2, linear, rule), rel=1e-12
        )


def test_replay_under_long_end_predicts_the_plan_that_runs_and_its_kept_mean():
    weights = normalize_weights([80.0, 3.0, 20.0, 1.0])
    keys = ["d41d", "8f00", "b204", "e980"]
    kwargs = dict(
        num_keep=2, num_long=1, min_candidates=2, max_candidates=4, per_token_latency=linear, num_engines=2,
        tail_prune="paper", tie_keys=keys,
    )  # fmt: skip
    budgets = set()
    for batch_weights in (weights, [1.0] * 4):
        for cost_weight in (0.0, 1.0, 100.0):
            choice = replay_budget(
                CAPPED, cost_weight=cost_weight, weights=batch_weights, truncated_rule="long_end", **kwargs
            )
            budgets.add(choice.budget)
            assert list(choice.plans) == build_plans(batch_weights, choice.budget, 2, 1, 2, 4, "paper", keys)
            expected = independent_step_time(CAPPED, choice.plans, 2, linear, "long_end")
            assert choice.rollout_time_s == pytest.approx(expected, rel=1e-12)
    assert len(budgets) > 1  # precondition: more than one plan was checked
    # With lambda = 0 the rule changes the budget. At budget 13 the plans are [(4, 0), (3, 1), (4, 0), (2, 1)]:
    # p0 keeps its 2 shortest 10 + 30 = 40 (shortest-only; it stops at its 2nd stop, 30), p2 5 + 45 = 50, p3 both,
    # 15 + 16 = 31; p1 runs dual-end over 20, 100 (truncated), 24 and keeps the shortest and the longest:
    #   exclude: 20 + 24 = 44 -> (40 + 44 + 50 + 31) / 8 = 20.625, E = (50.75 - 20.625) / 50.75
    #   long_end: 20 + 100 = 120 -> (40 + 120 + 50 + 31) / 8 = 30.125, E = (50.75 - 30.125) / 50.75
    # At budget 14 p1 turns shortest-only too (4 candidates, M_up): 20 + 24 = 44 under both rules, mean 20.625. So
    # exclude ties 13 and 14 and keeps the cheaper 13; long_end needs 14 to keep the truncated candidate out.
    exclude = replay_budget(CAPPED, cost_weight=0.0, weights=weights, **kwargs)
    long_end = replay_budget(CAPPED, cost_weight=0.0, weights=weights, truncated_rule="long_end", **kwargs)
    assert [(p.num_candidates, p.num_long) for p in build_plans(weights, 13, 2, 1, 2, 4, "paper", keys)] == [
        (4, 0), (3, 1), (4, 0), (2, 1)
    ]  # fmt: skip
    assert (exclude.budget, long_end.budget) == (13, 14)
    assert exclude.kept_length_mean == long_end.kept_length_mean == pytest.approx(20.625, rel=1e-12)
    grid = dict(long_end.grid)
    assert grid[13 / 4] == pytest.approx((50.75 - 30.125) / 50.75, rel=1e-12)
    assert grid[14 / 4] == pytest.approx((50.75 - 20.625) / 50.75, rel=1e-12)
    assert dict(exclude.grid)[13 / 4] == pytest.approx((50.75 - 20.625) / 50.75, rel=1e-12)


def test_utility_budget_is_replay_budget_over_draw_replay():
    history = [[(5, False), (9, False), (30, True)], [(2, False), (40, False)]]
    args = dict(num_keep=2, num_long=1, min_candidates=2, max_candidates=4, cost_weight=0.3, per_token_latency=linear)
    weights, keys = [0.5, 2.0, 1.0], ["b", "a", "c"]
    samples = draw_replay(history, 3, 4, draws=5, seed=3)
    assert len(samples) == 5 and all(len(d) == 3 and all(len(g) == 4 for g in d) for d in samples)
    assert all(candidate in history[0] + history[1] for d in samples for g in d for candidate in g)
    choice = utility_budget(history, 3, **args, draws=5, seed=3, weights=weights, tie_keys=keys)
    assert choice == replay_budget(samples, **args, weights=weights, tie_keys=keys)


@pytest.mark.parametrize(
    "changes, error, message",
    [
        (dict(samples=[]), ValueError, "samples=[] is empty"),
        (dict(samples=[[[(1, False)] * 4], [[(1, False)] * 4] * 2]), ValueError, "samples[1] holds 2 prompts"),
        (
            dict(samples=[[[(1, False)] * 3]]),
            ValueError,
            "samples[0][0] holds 3 candidates; expected max_candidates=4",
        ),
        (dict(samples=[[[(1, 0)] * 4]]), TypeError, "samples[0][0][0] truncated=0"),
        (dict(weights=[1.0, 2.0]), ValueError, "weights has 2 entries but the draws hold 1 prompts"),
        (dict(tie_keys=["a", "b"]), ValueError, "tie_keys has 2 entries but weights has 1"),
        (dict(truncated_rule="keep"), ValueError, "truncated_rule='keep' is not one of ['exclude', 'long_end']"),
    ],
)
def test_replay_budget_rejects_bad_input(changes, error, message):
    kwargs = dict(
        samples=[[[(3, False)] * 4]], num_keep=2, num_long=1, min_candidates=2, max_candidates=4, cost_weight=0.5,
        per_token_latency=linear,
    )  # fmt: skip
    with pytest.raises(error) as info:
        replay_budget(**{**kwargs, **changes})
    assert message in str(info.value)
