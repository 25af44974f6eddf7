"""Dual-end selection (§3(b)) and its online form, the GroupSelector (§3(c))."""

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openrlhf_darts.core.selection import GroupSelector, is_underfilled, select_dual_end
from openrlhf_darts.core.types import GroupPlan

pytestmark = pytest.mark.unit


def decode_group(raw: bytes, allow_truncated: bool = True):
    """(lengths, truncated, num_keep, num_long) from 35 bytes, with 1 <= num_keep <= 8 <= ... and M' in [num_keep, 16].

    One byte string is ~3x cheaper for hypothesis to draw than lists of ints, which keeps 1,000 examples per property
    inside the suite's time budget; it still shrinks toward short, all-zero groups. Lengths lie in [0, 40], so ties
    are common, and about 3 in 8 candidates are truncated.
    """
    num_keep = 1 + raw[0] % 8
    num_candidates = num_keep + raw[1] % (17 - num_keep)
    num_long = raw[2] % num_keep
    lengths = [b % 41 for b in raw[3 : 3 + num_candidates]]
    truncated = [allow_truncated and b >= 160 for b in raw[19 : 19 + num_candidates]]
    return lengths, truncated, num_keep, num_long


def groups(allow_truncated: bool = True):
    return st.binary(min_size=35, max_size=35).map(lambda raw: decode_group(raw, allow_truncated))


def key(lengths, j):
    return (lengths[j], j)


# ---- offline rule


def test_hand_example_dual_end():
    # Sorted by (length, index): (3,2) (5,0) (7,3) (9,1) (11,4). num_keep=3, num_long=1, so K=2:
    # short end = indices 2, 0; long end = index 4. Ascending: [0, 2, 4].
    assert select_dual_end([5, 9, 3, 7, 11], [False] * 5, num_keep=3, num_long=1) == [0, 2, 4]


def test_hand_example_excludes_truncated_when_enough_valid():
    # Index 4 (length 2) is truncated, so U = (3,2) (5,0) (7,3) (9,1). K=1 -> [2], L=1 -> [1]. Result [1, 2].
    assert select_dual_end([5, 9, 3, 7, 2], [False, False, False, False, True], num_keep=2, num_long=1) == [1, 2]


def test_hand_example_fill_branch_takes_lowest_index_truncated():
    # Only index 2 is valid; num_keep=3 needs 2 fillers, the truncated ones of lowest index: 0 and 1 -> [0, 1, 2].
    truncated = [True, True, False, True, True]
    assert select_dual_end([8, 8, 3, 8, 8], truncated, num_keep=3, num_long=1) == [0, 1, 2]
    assert is_underfilled(truncated, 3)  # 1 valid < 3
    assert not is_underfilled(truncated, 1)  # 1 valid >= 1


def test_hand_example_ties_broken_by_index():
    # All lengths equal, so order is by index: K=2 shortest -> [0, 1]; L=1 longest -> [3].
    assert select_dual_end([4, 4, 4, 4], [False] * 4, num_keep=3, num_long=1) == [0, 1, 3]


def test_passes_through_when_num_candidates_equals_num_keep():
    # M' = M: whatever the lengths, flags or L, every candidate is kept (§3(a)).
    assert select_dual_end([9, 1, 5], [True, False, False], num_keep=3, num_long=2) == [0, 1, 2]


@given(groups())
def test_keeps_exactly_num_keep_distinct_sorted_indices(group):
    lengths, truncated, num_keep, num_long = group
    kept = select_dual_end(lengths, truncated, num_keep, num_long)
    assert len(kept) == num_keep
    assert kept == sorted(set(kept))
    assert all(0 <= j < len(lengths) for j in kept)


@given(groups())
def test_kept_is_k_shortest_plus_l_longest_of_the_valid(group):
    lengths, truncated, num_keep, num_long = group
    kept = set(select_dual_end(lengths, truncated, num_keep, num_long))
    valid = [j for j in range(len(lengths)) if not truncated[j]]
    if len(valid) < num_keep:
        return
    assert not any(truncated[j] for j in kept)  # untruncated preferred
    # Every dropped valid candidate lies strictly between the short end and the long end: exactly K kept candidates
    # order before it and exactly L after it, by (length, index).
    for x in valid:
        if x in kept:
            continue
        before = sum(1 for j in kept if key(lengths, j) < key(lengths, x))
        assert (before, len(kept) - before) == (num_keep - num_long, num_long)


@given(groups())
def test_underfilled_keeps_all_valid_then_lowest_index_truncated(group):
    lengths, truncated, num_keep, num_long = group
    kept = select_dual_end(lengths, truncated, num_keep, num_long)
    valid = [j for j in range(len(lengths)) if not truncated[j]]
    assert is_underfilled(truncated, num_keep) == (len(valid) < num_keep)
    if len(valid) >= num_keep:
        return
    assert set(valid) <= set(kept)
    fill = sorted(set(kept) - set(valid))
    assert fill == [j for j in range(len(lengths)) if truncated[j]][: num_keep - len(valid)]


@given(groups(), st.randoms(use_true_random=True))
def test_kept_lengths_do_not_depend_on_candidate_order(group, rnd):
    # Relabeling candidates only changes which of several equal-length valid candidates wins a tie, never the kept
    # valid lengths. The fill branch picks truncated candidates by index on purpose, so only their count is invariant.
    lengths, truncated, num_keep, num_long = group
    order = list(range(len(lengths)))
    rnd.shuffle(order)
    kept = select_dual_end(lengths, truncated, num_keep, num_long)
    shuffled = [
        order[p]
        for p in select_dual_end([lengths[j] for j in order], [truncated[j] for j in order], num_keep, num_long)
    ]
    assert sorted(lengths[j] for j in kept if not truncated[j]) == sorted(
        lengths[j] for j in shuffled if not truncated[j]
    )
    assert sum(truncated[j] for j in kept) == sum(truncated[j] for j in shuffled)


@given(groups(allow_truncated=False))
def test_shortest_only_keeps_the_num_keep_shortest(group):
    lengths, truncated, num_keep, _ = group
    kept = set(select_dual_end(lengths, truncated, num_keep, num_long=0))
    dropped = [lengths[j] for j in range(len(lengths)) if j not in kept]
    if dropped:
        assert max(lengths[j] for j in kept) <= min(dropped)


# ---- truncated candidates ranked as the longest (--darts.truncated long_end, the reference code's behaviour)


def test_hand_example_long_end():
    # Index 3 is truncated at 20. long_end order by (truncated, length, index): (0,3,2) (0,5,0) (0,7,4) (0,9,1)
    # (1,20,3). num_keep=3, num_long=1: K=2 shortest -> 2, 0; L=1 longest -> 3 (the truncated one). Ascending [0,2,3].
    lengths, truncated = [5, 9, 3, 20, 7], [False, False, False, True, False]
    assert select_dual_end(lengths, truncated, 3, 1, "long_end") == [0, 2, 3]
    # exclude drops it: valid (3,2) (5,0) (7,4) (9,1) -> K=2: 2, 0; L=1: 1 -> [0, 1, 2].
    assert select_dual_end(lengths, truncated, 3, 1, "exclude") == [0, 1, 2]
    # Shortest-only: the truncated candidate is the longest, so it is kept only when everything else is: keep 3 of
    # (3,2) (5,0) (7,4) ... -> [0, 2, 4]; keep 5 -> all of them.
    assert select_dual_end(lengths, truncated, 3, 0, "long_end") == [0, 2, 4]
    assert select_dual_end(lengths, truncated, 5, 0, "long_end") == [0, 1, 2, 3, 4]


def test_long_end_prefers_the_truncated_candidate_of_highest_index_for_the_long_end():
    # Two truncated at the cap 30 (indices 0 and 2): (1,30,2) orders last, so L=1 keeps index 2.
    assert select_dual_end([30, 4, 30, 6], [True, False, True, False], 2, 1, "long_end") == [1, 2]


@given(groups())
def test_long_end_kept_is_k_shortest_plus_l_longest_by_truncation_then_length(group):
    lengths, truncated, num_keep, num_long = group
    kept = set(select_dual_end(lengths, truncated, num_keep, num_long, "long_end"))
    assert len(kept) == num_keep

    def rank(j):
        return (truncated[j], lengths[j], j)

    # Every dropped candidate lies strictly between the ends: exactly K kept order before it and L after it.
    for x in range(len(lengths)):
        if x not in kept:
            before = sum(1 for j in kept if rank(j) < rank(x))
            assert (before, len(kept) - before) == (num_keep - num_long, num_long)
    # Without truncated candidates the two rules agree.
    if not any(truncated):
        assert sorted(kept) == select_dual_end(lengths, truncated, num_keep, num_long, "exclude")


def test_select_rejects_an_unknown_truncated_rule():
    with pytest.raises(ValueError, match=r"truncated_rule='keep' is not one of \['exclude', 'long_end'\]"):
        select_dual_end([1, 2], [False, False], 1, 0, "keep")


@pytest.mark.parametrize(
    "kwargs, error, needle",
    [
        (dict(lengths=[1, 2], truncated=[False, False], num_keep=3, num_long=0), ValueError, "num_keep=3"),
        (dict(lengths=[1, 2], truncated=[False], num_keep=1, num_long=0), ValueError, "truncated has 1 entries"),
        (dict(lengths=[1, -2], truncated=[False, False], num_keep=1, num_long=0), ValueError, "lengths[1]=-2"),
        (dict(lengths=[1, 2.5], truncated=[False, False], num_keep=1, num_long=0), TypeError, "lengths[1]=2.5"),
        (dict(lengths=[1, True], truncated=[False, False], num_keep=1, num_long=0), TypeError, "lengths[1]=True"),
        (dict(lengths=[1, 2], truncated=[False, 1], num_keep=1, num_long=0), TypeError, "truncated[1]=1"),
        (dict(lengths=[1, 2], truncated=[False, False], num_keep=2, num_long=2), ValueError, "num_long=2"),
        (dict(lengths=[1, 2], truncated=[False, False], num_keep=2, num_long=-1), ValueError, "num_long=-1"),
        (dict(lengths=[1, 2], truncated=[False, False], num_keep=0, num_long=0), ValueError, "num_keep=0"),
        (dict(lengths="12", truncated=[False, False], num_keep=1, num_long=0), TypeError, "lengths='12'"),
    ],
)
def test_select_dual_end_rejects_bad_input(kwargs, error, needle):
    with pytest.raises(error) as info:
        select_dual_end(**kwargs)
    assert needle in str(info.value)


def test_is_underfilled_rejects_bad_input():
    with pytest.raises(ValueError, match="num_keep=0"):
        is_underfilled([False], 0)
    with pytest.raises(TypeError, match=r"truncated\[0\]=0"):
        is_underfilled([0], 1)


# ---- online form


def plan_for(lengths, num_keep, num_long):
    return GroupPlan(len(lengths), num_keep, num_long)


@pytest.mark.parametrize("rule", ["exclude", "long_end"])
@given(group=groups(), rnd=st.randoms(use_true_random=True))
def test_online_kept_equals_offline_for_any_finish_order(rule, group, rnd):
    lengths, truncated, num_keep, num_long = group
    order = list(range(len(lengths)))
    rnd.shuffle(order)
    selector = GroupSelector(plan_for(lengths, num_keep, num_long), rule)
    for j in order:
        selector.on_finish(j, lengths[j], truncated[j])
    assert selector.done and selector.num_finished == len(lengths)
    assert selector.kept() == select_dual_end(lengths, truncated, num_keep, num_long, rule)


@given(groups(), st.randoms(use_true_random=True))
def test_can_abort_and_release_length_track_valid_finishes(group, rnd):
    lengths, truncated, num_keep, num_long = group
    order = list(range(len(lengths)))
    rnd.shuffle(order)
    selector = GroupSelector(plan_for(lengths, num_keep, num_long))
    finished: list[int] = []
    for j in order:
        selector.on_finish(j, lengths[j], truncated[j])
        finished.append(j)
        valid = sorted(lengths[i] for i in finished if not truncated[i])
        assert selector.can_abort() == (num_long == 0 and len(valid) >= num_keep)
        assert selector.release_length() == (valid[num_keep - 1] if len(valid) >= num_keep else None)
        assert selector.finished_indices == tuple(sorted(finished))
        assert selector.done == (len(finished) == len(lengths))


def lockstep(lengths):
    """Finish times of candidates decoding in lockstep: candidate j stops after step lengths[j]."""
    return sorted(set(lengths))


@given(groups(), st.randoms(use_true_random=True))
def test_lockstep_early_abort_keeps_what_running_everything_keeps(group, rnd):
    # §3(c): in lockstep every running candidate has generated t tokens after step t and ends longer than t, so
    # aborting all of them once can_abort() holds (with the min-progress guard t >= release) must not change the kept
    # set.
    lengths, truncated, _, _ = group
    num_keep = min(len(lengths), 1 + rnd.randrange(8))
    selector = GroupSelector(plan_for(lengths, num_keep, 0))
    for t in lockstep(lengths):
        now = [j for j in range(len(lengths)) if lengths[j] == t]
        rnd.shuffle(now)  # finishes within one step arrive in any order
        for j in now:
            selector.on_finish(j, lengths[j], truncated[j])
        if selector.can_abort():
            assert selector.release_length() <= t  # the engine's guard holds at the moment of the M-th valid finish
            break
    assert selector.kept() == select_dual_end(lengths, truncated, num_keep, 0)


@given(groups(), st.randoms(use_true_random=True))
def test_short_end_final_is_stable_and_part_of_the_final_kept_set(group, rnd):
    # Lockstep decoding: after step t every running candidate has t tokens (and ends longer than t).
    lengths, truncated, num_keep, num_long = group
    plan = plan_for(lengths, num_keep, num_long)
    final = select_dual_end(lengths, truncated, num_keep, num_long)
    valid = sorted((lengths[j], j) for j in range(len(lengths)) if not truncated[j])
    selector = GroupSelector(plan)
    released = None
    for t in lockstep(lengths):
        now = [j for j in range(len(lengths)) if lengths[j] == t]
        rnd.shuffle(now)
        for j in now:
            selector.on_finish(j, lengths[j], truncated[j])
        pending = [(t, j) for j in range(len(lengths)) if j not in selector.finished_indices]
        result = selector.short_end_final(pending)
        if released is not None:
            assert result == released  # once final, it never changes
        if result is not None:
            released = result
            assert len(result) == plan.num_short
            assert set(result) <= set(final)
            assert result == sorted(j for _, j in valid[: plan.num_short])
    # With everything finished the answer is known whenever there are K valid candidates.
    assert (released is not None) == (len(valid) >= plan.num_short)


def test_short_end_final_waits_for_pending_candidates():
    # Plan (4 candidates, keep 3, long 1): K = 2. Index 1 finishes at 5 tokens: 1 valid finish < K.
    selector = GroupSelector(GroupPlan(4, 3, 1))
    selector.on_finish(1, 5, False)
    assert selector.short_end_final([(100, 0), (100, 2), (100, 3)]) is None
    # Index 2 finishes at 8: b = (8, 2). Candidate 0 at 7 tokens could still end at 7 < 8 and displace index 2.
    selector.on_finish(2, 8, False)
    assert selector.short_end_final([(7, 0), (9, 3)]) is None
    # At 8 tokens candidate 0 could still end at exactly 8, and (8, 0) < (8, 2) by index: not final either.
    assert selector.short_end_final([(8, 0), (9, 3)]) is None
    # Candidate 3 at 8 tokens orders after (8, 2) by index; candidate 0 past 8: final.
    assert selector.short_end_final([(9, 0), (8, 3)]) == [1, 2]
    # A candidate still waiting in the engine's queue (0 tokens) could finish shortest.
    assert selector.short_end_final([(9, 0), (0, 3)]) is None
    assert selector.short_end_final([]) == [1, 2]
    with pytest.raises(ValueError, match="candidate index=1 is pending but already finished"):
        selector.short_end_final([(9, 1)])


def test_short_end_final_under_long_end_with_a_truncated_finish():
    # long_end, plan (4, 3, 1), K = 2. Index 0 truncated at the cap 10, index 1 valid at 4. The two lowest by
    # (truncated, length, index) are (0, 4, 1) and (1, 10, 0): a pending sibling ending valid at any length would
    # push index 0 out, so nothing is final. Once index 2 finishes valid at 6 the short end is {1, 2} and candidate 3,
    # at 7 tokens, can only end above it (valid at >= 7, or truncated: ranked last).
    selector = GroupSelector(GroupPlan(4, 3, 1), "long_end")
    selector.on_finish(0, 10, True)
    selector.on_finish(1, 4, False)
    assert selector.short_end_final([(7, 2), (7, 3)]) is None
    selector.on_finish(2, 6, False)
    assert selector.short_end_final([(7, 3)]) == [1, 2]


CAP = 5  # brute force: a pending candidate ends valid at any length in [progress, CAP - 1] or truncated at CAP


@given(st.binary(min_size=20, max_size=20), st.sampled_from(["exclude", "long_end"]))
def test_short_end_final_against_brute_force(raw, rule):
    # A group mid-flight: finished candidates (length, truncated) and pending ones (progress). The short end of a
    # finished group is its K lowest candidates by (truncated, length, index): under both rules that is the K
    # shortest valid ones when there are K, and it is always kept. short_end_final must return S exactly when every
    # way the pending candidates can end gives the short end S, and S holds finished candidates only.
    num_candidates = 2 + raw[0] % 5
    num_keep = 2 + raw[1] % (num_candidates - 1) if num_candidates > 2 else 2
    num_long = 1 + raw[2] % (num_keep - 1)
    plan = GroupPlan(num_candidates, num_keep, num_long)
    pending = {j: raw[4 + j] % CAP for j in range(num_candidates) if raw[12 + j] % 3 == 0}
    selector = GroupSelector(plan, rule)
    finished = {}
    for j in range(num_candidates):
        if j not in pending:
            finished[j] = (CAP, True) if raw[4 + j] >= 200 else (raw[4 + j] % CAP, False)
            selector.on_finish(j, *finished[j])
    result = selector.short_end_final([(g, j) for j, g in pending.items()])
    options = [[(j, (length, False)) for length in range(g, CAP)] + [(j, (CAP, True))] for j, g in pending.items()]
    short_ends = set()
    for ends in itertools.product(*options):
        final = {**finished, **dict(ends)}
        lengths = [final[j][0] for j in range(num_candidates)]
        cut = [final[j][1] for j in range(num_candidates)]
        ranked = sorted(range(num_candidates), key=lambda j: (cut[j], lengths[j], j))
        short = sorted(ranked[: plan.num_short])
        assert result is None or result == short  # sound
        assert result is None or set(result) <= set(select_dual_end(lengths, cut, num_keep, num_long, rule))
        short_ends.add(tuple(short))
    if pending:
        # Exact while anything is pending: None means some completion changes the short end, or a member of it is
        # still pending (only finished samples can be released).
        certain = len(short_ends) == 1 and set(next(iter(short_ends))) <= set(finished)
        assert (result is not None) == certain
    else:
        valid = sum(not cut for _, cut in finished.values())
        assert (result is not None) == (valid >= plan.num_short)


def test_hand_example_online_shortest_only():
    # Plan (5 candidates, keep 2, shortest-only). Finishes: j=3 at 4 tokens, j=1 truncated at 10, j=0 at 6.
    selector = GroupSelector(GroupPlan(5, 2, 0))
    selector.on_finish(3, 4, False)
    assert not selector.can_abort() and selector.release_length() is None  # 1 valid < 2
    selector.on_finish(1, 10, True)
    assert not selector.can_abort()  # a truncated finish does not count
    selector.on_finish(0, 6, False)
    # Valid finishes sorted: 4 (j=3), 6 (j=0); the 2nd shortest is 6 tokens.
    assert selector.can_abort() and selector.release_length() == 6
    assert selector.kept() == [0, 3]
    assert not selector.done and selector.num_finished == 3


def test_hand_example_online_long_end():
    # Plan (5 candidates, keep 2, shortest-only), long_end: a truncated finish counts as a stop, so two stops of any
    # kind release the group; the longest finish ranks truncated ones last.
    selector = GroupSelector(GroupPlan(5, 2, 0), "long_end")
    selector.on_finish(1, 10, True)
    assert not selector.can_abort()  # 1 stop < 2
    selector.on_finish(3, 4, False)
    assert selector.can_abort() and selector.kept() == [1, 3]
    assert selector.longest_key() == (1, 10, 1) and selector.ranked_finishes() == [(0, 4, 3), (1, 10, 1)]
    assert selector.release_key() is None  # only one valid finish: no length bound, the release is by count
    # exclude on the same finishes: the truncated one neither counts nor competes for the long end.
    selector = GroupSelector(GroupPlan(5, 2, 0), "exclude")
    selector.on_finish(1, 10, True)
    selector.on_finish(3, 4, False)
    assert not selector.can_abort() and selector.longest_key() == (0, 4, 3)
    selector.on_finish(0, 4, False)
    assert selector.release_key() == (4, 3) and selector.ranked_finishes() == [(0, 4, 0), (0, 4, 3)]


def test_dual_end_never_aborts():
    selector = GroupSelector(GroupPlan(3, 2, 1))
    for j, length in enumerate([1, 2, 3]):
        selector.on_finish(j, length, False)
    assert not selector.can_abort()  # L > 0: the longest candidate is unknown until all stop


def test_selector_rejects_bad_events():
    selector = GroupSelector(GroupPlan(3, 2, 0))
    with pytest.raises(ValueError, match=r"index=3 is out of range; expected a candidate index in \[0, 3\)"):
        selector.on_finish(3, 5, False)
    with pytest.raises(ValueError, match="index=-1"):
        selector.on_finish(-1, 5, False)
    selector.on_finish(0, 5, False)
    with pytest.raises(ValueError, match="index=0 finished twice"):
        selector.on_finish(0, 5, False)
    with pytest.raises(ValueError, match="length=-5"):
        selector.on_finish(1, -5, False)
    with pytest.raises(TypeError, match="truncated=None"):
        selector.on_finish(1, 5, None)
    with pytest.raises(ValueError, match="only 1 candidates finished but num_keep=2"):
        selector.kept()
    with pytest.raises(ValueError, match="progress=-1"):
        selector.short_end_final([(-1, 2)])
    with pytest.raises(TypeError, match="plan=3"):
        GroupSelector(3)
