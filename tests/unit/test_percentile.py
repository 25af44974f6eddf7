"""core.percentile.nearest_rank against a brute-force reading of the definition, and hand-computed cases."""

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openrlhf_darts.core.percentile import nearest_rank

pytestmark = pytest.mark.unit


def brute_force(values, q):
    """The smallest value v such that at least q% of the values are <= v (exact rational arithmetic)."""
    n = len(values)
    for v in sorted(set(values)):
        if Fraction(sum(1 for x in values if x <= v)) >= Fraction(q) * n / 100:
            return float(v)
    raise AssertionError("unreachable: the maximum covers 100%")


@given(
    st.lists(st.integers(min_value=-1000, max_value=1000), min_size=1, max_size=60),
    st.one_of(st.integers(min_value=0, max_value=100), st.sampled_from([12.5, 33.3, 66.7, 99.9])),
)
def test_matches_brute_force(values, q):
    got = nearest_rank(values, q)
    if q == 0:
        assert got == min(values)  # rank max(1, 0) = 1
    else:
        assert got == brute_force(values, q)
    assert got in values


def test_hand_computed_cases():
    # N=10, q=90: rank ceil(10 * 90 / 100) = 9 -> the 9th smallest of 1..10 is 9.
    assert nearest_rank(range(10, 0, -1), 90) == 9.0
    # N=4, q=50: rank ceil(2) = 2 -> [1, 2, 7, 9][1] = 2; q=51: rank ceil(2.04) = 3 -> 7.
    assert nearest_rank([9, 1, 7, 2], 50) == 2.0
    assert nearest_rank([9, 1, 7, 2], 51) == 7.0
    # N=1: every percentile is the value.
    assert nearest_rank([5], 0) == nearest_rank([5], 100) == 5.0


@pytest.mark.parametrize("q", [-1, 100.5, "90", None, True])
def test_bad_q_names_the_value(q):
    with pytest.raises(ValueError, match=f"q={q!r}"):
        nearest_rank([1, 2, 3], q)


def test_empty_values_fail():
    with pytest.raises(ValueError, match="values is empty"):
        nearest_rank([], 50)
