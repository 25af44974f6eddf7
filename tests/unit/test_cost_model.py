"""Cost model of §3(e): the PTL table, rollout_time, and effective lengths under a plan."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openrlhf_darts.core.cost_model import PerTokenLatency, effective_lengths, engine_rollout_time, rollout_time
from openrlhf_darts.core.selection import select_dual_end
from openrlhf_darts.core.types import GroupPlan

pytestmark = pytest.mark.unit

# Bytes decoded into lengths in [0, 63]: hypothesis draws them several times faster than lists of ints.
length_lists = st.binary(max_size=24).map(lambda raw: [b % 64 for b in raw])


def linear(num_running):
    """PTL(r) = 0.010 + 0.001 r seconds: a strictly increasing profile."""
    return 0.010 + 0.001 * num_running


# ---- PerTokenLatency


def test_hand_example_interpolation():
    ptl = PerTokenLatency([(1, 0.010), (3, 0.014), (5, 0.030)])
    assert ptl(1) == 0.010 and ptl(3) == 0.014 and ptl(5) == 0.030  # the points themselves
    assert ptl(0.5) == 0.010 and ptl(0) == 0.010  # constant below the first point
    assert ptl(2) == pytest.approx(0.012)  # halfway between 0.010 and 0.014
    assert ptl(4) == pytest.approx(0.022)  # halfway between 0.014 and 0.030
    # Beyond the last point the last segment continues: slope (0.030 - 0.014) / 2 = 0.008 per sequence,
    # so PTL(7) = 0.030 + 2 * 0.008 = 0.046.
    assert ptl(7) == pytest.approx(0.046)
    single = PerTokenLatency([(4, 0.02)])
    assert single(1) == single(4) == single(100) == 0.02  # one point: constant


@given(st.binary(min_size=2, max_size=16), st.floats(0, 64))
def test_interpolation_stays_between_neighbours(raw, x):
    # Build strictly increasing r (steps of 1-4) and non-decreasing latency (steps of 0-0.255 s) from byte pairs, so
    # interpolation is monotone and bracketed by the end points.
    points, r, seconds = [], 0, 0.001
    for dr, ds in zip(raw[0::2], raw[1::2]):
        r, seconds = r + 1 + dr % 4, seconds + ds / 1000
        points.append((r, seconds))
    ptl = PerTokenLatency(points)
    y = ptl(x)
    assert y >= points[0][1]
    if x <= points[-1][0]:
        assert y <= points[-1][1] * (1 + 1e-12)
    assert ptl(x + 1) >= y * (1 - 1e-12)  # non-decreasing profile -> non-decreasing interpolation


def test_profile_round_trips_through_a_file(tmp_path):
    ptl = PerTokenLatency([(1, 0.01), (8, 0.0125), (64, 0.04)], meta={"model": "tiny", "device": "cpu", "tp": 1})
    path = tmp_path / "ptl.json"
    ptl.save(path)
    assert json.loads(path.read_text()) == {
        "points": [[1, 0.01], [8, 0.0125], [64, 0.04]],
        "meta": {"model": "tiny", "device": "cpu", "tp": 1},
    }
    assert PerTokenLatency.load(path) == ptl
    assert PerTokenLatency.from_dict({"points": [[2, 0.5]]}) == PerTokenLatency([(2, 0.5)])  # meta is optional


@pytest.mark.parametrize(
    "points, error, message",
    [
        ([], ValueError, "points=[] is empty"),
        ([(1, 0.01), (1, 0.02)], ValueError, "points[1] num_running=1 does not exceed the previous 1"),
        ([(2, 0.01), (1, 0.02)], ValueError, "points[1] num_running=1 does not exceed the previous 2"),
        ([(0, 0.01)], ValueError, "points[0] num_running=0 is below 1"),
        ([(1, 0.0)], ValueError, "points[0] seconds=0.0 is not positive"),
        ([(1, -0.5)], ValueError, "points[0] seconds=-0.5 is not positive"),
        ([(1, float("nan"))], ValueError, "points[0] seconds=nan is not finite"),
        ([(1, float("inf"))], ValueError, "points[0] seconds=inf is not finite"),
        ([(1.5, 0.01)], TypeError, "points[0] num_running=1.5"),
        ([(1, 0.01, 3)], ValueError, "points[0]=(1, 0.01, 3) has 3 entries"),
        ([(1, 0.02), (2, 0.01)], ValueError, "slopes down"),
    ],
)
def test_profile_rejects_bad_points(points, error, message):
    with pytest.raises(error) as info:
        PerTokenLatency(points)
    assert message in str(info.value)


def test_profile_rejects_bad_queries_and_files(tmp_path):
    ptl = PerTokenLatency([(1, 0.01)])
    with pytest.raises(ValueError, match="num_running=-1 is below 0.0"):
        ptl(-1)
    with pytest.raises(ValueError, match="num_running=nan is not finite"):
        ptl(float("nan"))
    with pytest.raises(ValueError, match=r"unknown: \['tp'\]"):
        PerTokenLatency.from_dict({"points": [[1, 0.01]], "tp": 2})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        PerTokenLatency.load(bad)


# ---- rollout_time


def test_hand_example_rollout_time():
    # Sorted lengths [1, 3, 4], R = 3, PTL(r) = r: (1-0) * PTL(3) + (3-1) * PTL(2) + (4-3) * PTL(1) = 3 + 4 + 1 = 8.
    assert rollout_time([3, 1, 4], lambda r: float(r)) == 8.0
    # With PTL(r) = 0.010 + 0.001 r: 1 * 0.013 + 2 * 0.012 + 1 * 0.011 = 0.048.
    assert rollout_time([3, 1, 4], linear) == pytest.approx(0.048)
    assert rollout_time([], linear) == 0.0 and rollout_time([0, 0], linear) == 0.0


@given(length_lists, st.integers(-20, 4))
def test_constant_latency_gives_latency_times_max_length(lengths, exponent):
    # With PTL = c every term is c * (l[m] - l[m-1]), which telescopes to c * max. A power of two c makes every
    # product and partial sum exact, so equality is exact.
    c = 2.0**exponent
    assert rollout_time(lengths, lambda r: c) == c * max(lengths, default=0)
    assert rollout_time(lengths, lambda r: 0.013) == pytest.approx(0.013 * max(lengths, default=0), rel=1e-12)


@given(length_lists)
def test_rollout_time_equals_a_step_by_step_decode(lengths):
    # Independent oracle: decode step t (t = 0, 1, ...) runs every sequence longer than t and costs PTL(#running).
    steps = sum(linear(sum(1 for length in lengths if length > t)) for t in range(max(lengths, default=0)))
    assert rollout_time(lengths, linear) == pytest.approx(steps, rel=1e-12)


@given(length_lists.filter(bool))
def test_adding_a_sequence_never_shortens_the_rollout(lengths):
    # T = sum over steps of PTL(#running); one more sequence raises #running on its steps, and PTL is non-decreasing.
    assert rollout_time(lengths, linear) >= rollout_time(lengths[:-1], linear) * (1 - 1e-12)


def test_rollout_time_rejects_bad_input():
    with pytest.raises(ValueError, match=r"lengths\[0\]=-1"):
        rollout_time([-1], linear)
    with pytest.raises(TypeError, match="is not callable"):
        rollout_time([1], 0.01)
    with pytest.raises(ValueError, match=r"per_token_latency\(1\) returned nan"):
        rollout_time([1], lambda r: float("nan"))


# ---- effective lengths


def test_hand_example_effective_lengths():
    lengths = [5, 9, 3, 7]
    # Dual-end runs everything to the end.
    assert effective_lengths(lengths, [False] * 4, GroupPlan(4, 2, 1)) == [5, 9, 3, 7]
    # Shortest-only, keep 2: valid sorted 3, 5, 7, 9 -> release at the 2nd shortest, 5: min(l, 5) = [5, 5, 3, 5].
    assert effective_lengths(lengths, [False] * 4, GroupPlan(4, 2, 0)) == [5, 5, 3, 5]
    # Truncated candidates do not count toward the release: valid 5, 3 -> release 5; the capped 10s stop at 5.
    assert effective_lengths([5, 10, 3, 10], [False, True, False, True], GroupPlan(4, 2, 0)) == [5, 5, 3, 5]
    # Only one valid candidate for keep 2: nothing is released early, so all run fully.
    assert effective_lengths([5, 10, 10, 10], [False, True, True, True], GroupPlan(4, 2, 0)) == [5, 10, 10, 10]


def test_hand_example_effective_lengths_long_end():
    # long_end: a shortest-only group stops at its num_keep-th stop of any kind. Lockstep stops at 3, 4 (truncated),
    # 5, 9: keep 2 releases at 4, so min(l, 4) = [4, 4, 3, 4]; exclude ignores the truncated 4 and releases at 5.
    lengths, truncated = [5, 4, 3, 9], [False, True, False, False]
    assert effective_lengths(lengths, truncated, GroupPlan(4, 2, 0), "long_end") == [4, 4, 3, 4]
    assert effective_lengths(lengths, truncated, GroupPlan(4, 2, 0), "exclude") == [5, 4, 3, 5]
    # One valid candidate for keep 2: the 2nd stop is a truncated one at the cap 10, which nothing outlasts.
    assert effective_lengths([5, 10, 10, 10], [False, True, True, True], GroupPlan(4, 2, 0), "long_end") == [
        5, 10, 10, 10
    ]  # fmt: skip
    assert effective_lengths(lengths, truncated, GroupPlan(4, 2, 1), "long_end") == lengths  # dual-end: to the end
    with pytest.raises(ValueError, match=r"truncated_rule='keep' is not one of \['exclude', 'long_end'\]"):
        effective_lengths(lengths, truncated, GroupPlan(4, 2, 0), "keep")


@given(st.binary(min_size=30, max_size=30))
def test_long_end_decodes_what_exclude_decodes_when_truncation_is_at_the_cap(raw):
    # The engine truncates at one cap per group and no finish is longer, so the num_keep-th stop of any kind is the
    # num_keep-th valid finish whenever one exists, and the cap (all run fully) otherwise.
    num_keep = 1 + raw[0] % 6
    cap = 1 + raw[1] % 40
    lengths = [b % (cap + 1) for b in raw[2 : 2 + num_keep + raw[2] % 8]]
    truncated = [b >= 170 for b in raw[14 : 14 + len(lengths)]]
    lengths = [cap if cut else length for length, cut in zip(lengths, truncated)]
    plan = GroupPlan(len(lengths), num_keep, 0)
    assert effective_lengths(lengths, truncated, plan, "long_end") == effective_lengths(lengths, truncated, plan)


def test_hand_example_engine_rollout_time():
    # Group A shortest-only (keep 1): lengths [2, 6] -> release 2 -> effective [2, 2].
    # Group B dual-end: lengths [4, 4] -> [4, 4]. Pooled sorted [2, 2, 4, 4], PTL(r) = r:
    # (2-0) * PTL(4) + (4-2) * PTL(2) = 8 + 4 = 12.
    groups = [([2, 6], [False, False], GroupPlan(2, 1, 0)), ([4, 4], [False, False], GroupPlan(2, 2, 1))]
    assert engine_rollout_time(groups, lambda r: float(r)) == 12.0


@given(st.binary(min_size=35, max_size=35))
def test_shortest_only_stops_at_the_release_without_touching_kept(raw):
    num_keep = 1 + raw[0] % 8
    lengths = [b % 41 for b in raw[3 : 3 + num_keep + raw[1] % 8]]
    truncated = [b >= 160 for b in raw[19 : 19 + len(lengths)]]
    plan = GroupPlan(len(lengths), num_keep, 0)
    effective = effective_lengths(lengths, truncated, plan)
    assert all(e <= length for e, length in zip(effective, lengths))
    valid = sorted(length for length, cut in zip(lengths, truncated) if not cut)
    if len(valid) >= num_keep:
        # Kept candidates finish by the release, so the early stop never shortens what the trainer sees.
        for j in select_dual_end(lengths, truncated, num_keep, 0):
            assert effective[j] == lengths[j]
        assert max(effective) == valid[num_keep - 1]
    else:
        assert effective == lengths


def test_effective_lengths_rejects_bad_input():
    with pytest.raises(ValueError, match="lengths has 3 entries but plan.num_candidates=4"):
        effective_lengths([1, 2, 3], [False] * 3, GroupPlan(4, 2, 0))
    with pytest.raises(TypeError, match="expected a GroupPlan"):
        effective_lengths([1, 2], [False] * 2, (2, 2, 0))
    with pytest.raises(ValueError, match=r"groups\[0\] has 2 entries"):
        engine_rollout_time([([1], [False])], linear)
    assert engine_rollout_time([], linear) == 0.0  # no groups, no decode steps
