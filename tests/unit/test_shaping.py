"""core.shaping: the length push of a GRPO step, against hand-computed cases (DARTS_SPEC.md §4's table) and identities
that do not restate its definition (corr x std, Price's re-weighting, invariances)."""

import math
import statistics

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from openrlhf_darts.core.shaping import group_advantages, length_correctness_corr, length_push, step_length_push

pytestmark = pytest.mark.unit

groups = st.integers(min_value=2, max_value=12).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(min_value=0, max_value=512), min_size=n, max_size=n),
        st.lists(st.sampled_from([0.0, 1.0]) | st.floats(min_value=-2, max_value=2), min_size=n, max_size=n),
    )
)


def test_the_spec_table_pattern_one_long_wrong():
    # DARTS_SPEC.md §4, M = 8, K = 7, L = 1: 7 right short answers (20 tokens), 1 wrong long one (100 tokens).
    # mean r = 0.875, std = sqrt(0.875 * 0.125 * 8 / 7) = 0.35355: A(short) = +0.35355, A(long) = -2.4749.
    rewards, lengths = [1.0] * 7 + [0.0], [20] * 7 + [100]
    advantages = group_advantages(rewards)
    assert advantages[0] == pytest.approx(0.35355, abs=1e-5) and advantages[-1] == pytest.approx(-2.4749, abs=1e-4)
    # mean l = 30: (7 * (-10) * 0.35355 + 70 * (-2.47487)) / 8 = (-24.7487 - 173.2412) / 8 = -24.7487
    assert length_push(lengths, rewards) == pytest.approx(-24.7487, abs=1e-3)
    # the same group with the long answer right instead: every answer right, no advantage, no push
    assert length_push(lengths, [1.0] * 8) == 0.0
    # Pattern II row: 1 right of the 7 short ones and the long one right: the push is > 0 (depth kept)
    assert length_push(lengths, [1.0] + [0.0] * 6 + [1.0]) > 0


@given(groups)
def test_push_is_correlation_times_length_spread(group):
    lengths, rewards = group
    corr = length_correctness_corr(lengths, rewards)
    assume(corr is not None)
    n = len(lengths)
    expected = corr * statistics.stdev(lengths) * (n - 1) / n  # with A = (r - mean) / std_r
    std_r = statistics.stdev(rewards)
    expected *= std_r / (std_r + 1e-9)  # upstream's eps
    assert length_push(lengths, rewards) == pytest.approx(expected, rel=1e-6, abs=1e-6)


@given(groups, st.floats(min_value=1e-4, max_value=1e-2))
def test_push_is_the_mean_length_shift_of_price_reweighting(group, eta):
    # Re-weight each kept sample by (1 + eta A_j) (the weights still sum to n, since the A_j sum to 0): the mean
    # length of the re-weighted set moves by eta * push.
    lengths, rewards = group
    advantages = group_advantages(rewards)
    weights = [1 + eta * a for a in advantages]
    shifted = sum(w * length for w, length in zip(weights, lengths)) / sum(weights)
    assert (shifted - statistics.fmean(lengths)) / eta == pytest.approx(length_push(lengths, rewards), rel=1e-5,
                                                                         abs=1e-4)  # fmt: skip


@given(groups, st.integers(min_value=0, max_value=100), st.randoms(use_true_random=False))
def test_push_ignores_order_and_length_offsets(group, offset, rng):
    lengths, rewards = group
    order = list(range(len(lengths)))
    rng.shuffle(order)
    push = length_push(lengths, rewards)
    assert length_push([lengths[i] for i in order], [rewards[i] for i in order]) == pytest.approx(push, abs=1e-9)
    assert length_push([x + offset for x in lengths], rewards) == pytest.approx(push, abs=1e-6)
    # the longer answers rewarded instead of the shorter ones: the push changes sign
    flipped = [max(lengths) + min(lengths) - x for x in lengths]
    assert length_push(flipped, rewards) == pytest.approx(-push, abs=1e-6)


def test_a_step_of_groups():
    # two groups of 4: one mixed (right answers short), one all wrong (no advantage)
    lengths = [10, 10, 30, 30, 50, 60, 70, 80]
    rewards = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    # group 1: mean l = 20, A = +-sqrt(3)/2 (std of [1,1,0,0] with n-1 is sqrt(1/3)): push = -10 * sqrt(3)/2 = -8.660
    first = -10 * math.sqrt(3) / 2
    figures = step_length_push(lengths, rewards, 4)
    assert figures["push"] == pytest.approx(first / 2, abs=1e-6)  # the all-wrong group counts as 0
    assert figures["push_mixed"] == pytest.approx(first, abs=1e-6)
    assert figures["corr"] == pytest.approx(-1.0)
    assert figures["mixed_share"] == 0.5
    none_mixed = step_length_push([1, 2, 3, 4], [0.0] * 4, 2)
    assert none_mixed == {"push": 0.0, "push_mixed": None, "corr": None, "mixed_share": 0.0}


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="do not form whole groups of 4"):
        step_length_push([1, 2, 3], [0.0, 1.0, 0.0], 4)
    with pytest.raises(ValueError, match="group_size=1"):
        step_length_push([1, 2], [0.0, 1.0], 1)
    with pytest.raises(ValueError, match="non-finite"):
        length_push([1, 2], [float("nan"), 1.0])
    with pytest.raises(ValueError, match="lengths has 3 values and rewards 2"):
        length_push([1, 2, 3], [0.0, 1.0])
    with pytest.raises(ValueError, match="a group of >= 2"):
        group_advantages([1.0])
