"""bench.selection_push: which candidates each arm keeps, and the push of the kept sets, on hand-made candidates."""

import pytest

from openrlhf_darts.bench.selection_push import SELECTIONS, kept_set, prompt_figures, summarize

pytestmark = pytest.mark.unit

# 16 candidates of one prompt, in the order sampled, n = 8. Lengths are distinct; index 5 hit the cap (256).
LENGTHS = [40, 22, 90, 31, 60, 256, 25, 70, 33, 120, 27, 50, 80, 29, 100, 35]
TRUNCATED = [j == 5 for j in range(16)]
REWARDS = [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]


def test_each_arm_keeps_what_its_rule_says():
    n = 8
    assert kept_set(LENGTHS, TRUNCATED, n, "baseline") == list(range(8))
    # shortest-only: the 8 shortest valid of the first 12 (index 5 truncated, never ranked):
    # valid lengths 40 22 90 31 60 25 70 33 120 27 50 -> 22(1) 25(6) 27(10) 31(3) 33(8) 40(0) 50(11) 60(4)
    assert kept_set(LENGTHS, TRUNCATED, n, "shortest_only") == [0, 1, 3, 4, 6, 8, 10, 11]
    # dual-end, L = 1, first 10, exclude: 7 shortest valid (22 25 31 33 40 60 70 -> 1 6 3 8 0 4 7) + longest valid
    # (120: 9)
    assert kept_set(LENGTHS, TRUNCATED, n, "darts_uniform_exclude") == [0, 1, 3, 4, 6, 7, 8, 9]
    # long_end: the truncated one (5) ranks longest and is the long end instead of 9
    assert kept_set(LENGTHS, TRUNCATED, n, "darts_uniform_long_end") == [0, 1, 3, 4, 5, 6, 7, 8]
    # L = 3 of the first 10, long_end: 5 shortest (1 6 3 8 0) + 3 longest (5 9 2: 256 cut, 120, 90)
    assert kept_set(LENGTHS, TRUNCATED, n, "darts_l3_long_end") == [0, 1, 2, 3, 5, 6, 8, 9]
    # L = 3 of all 16: 5 shortest (22 25 27 29 31 -> 1 6 10 13 3) + 3 longest (5, 9, 14: 256, 120, 100)
    assert kept_set(LENGTHS, TRUNCATED, n, "darts_wide_l3_long_end") == [1, 3, 5, 6, 9, 10, 13, 14]
    with pytest.raises(ValueError, match="darts_wide_l3_long_end selects from 16 candidates per prompt; only 12"):
        kept_set(LENGTHS[:12], TRUNCATED[:12], n, "darts_wide_l3_long_end")


def test_push_of_the_kept_sets():
    figures = prompt_figures(LENGTHS, REWARDS, TRUNCATED, 8)
    assert set(figures) == set(SELECTIONS)
    # shortest-only kept [0 1 3 4 6 8 10 11]: all right, so no advantage and no push
    assert figures["shortest_only"]["push"] == 0.0 and not figures["shortest_only"]["mixed"]
    # wide L = 3: lengths 22 31 256 25 120 27 29 100, rewards 1 1 0 1 0 1 1 0 -> 5 right short ones, 3 wrong long ones:
    # mean l = 610 / 8 = 76.25; std r (n-1) = sqrt(8 * (5/8) * (3/8) / 7) = 0.5175; A(right) = 0.375 / 0.5175 = 0.7246,
    # A(wrong) = -0.625 / 0.5175 = -1.2076; push = (0.7246 * (134 - 5 * 76.25) - 1.2076 * (476 - 3 * 76.25)) / 8
    #   = (0.7246 * -247.25 - 1.2076 * 247.25) / 8 = -59.72
    assert figures["darts_wide_l3_long_end"]["push"] == pytest.approx(-59.72, abs=0.01)
    assert figures["darts_wide_l3_long_end"]["accuracy"] == 5 / 8
    summary = summarize([figures, figures])
    assert summary["darts_wide_l3_long_end"]["push"] == pytest.approx(-59.72, abs=0.01)
    wide_minus_base = figures["darts_wide_l3_long_end"]["push"] - figures["baseline"]["push"]
    assert summary["darts_wide_l3_long_end"]["push_minus_baseline"] == pytest.approx(wide_minus_base)
    assert summary["baseline"]["push_minus_baseline"] == 0.0
