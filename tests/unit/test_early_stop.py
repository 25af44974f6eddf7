"""Per-candidate early stop (§3(c), core/early_stop.py) against a simulated engine that queues and lags.

The simulator is a small model of vLLM's behaviour as the engine actor sees it: at most `slots` candidates decode at
once (the rest wait in a FIFO queue with 0 tokens), each step adds one token to every running candidate, progress
reaches the actor only every `every`-th step (vLLM merges outputs when the consumer falls behind), and an abort lands
only after `lag` more decode steps, during which the candidate may stop by itself (a race). The oracle is selection
over the lengths every candidate would have reached had nothing been aborted.
"""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openrlhf_darts.core.early_stop import EarlyStop
from openrlhf_darts.core.selection import select_dual_end
from openrlhf_darts.core.types import GroupOutcome, GroupPlan

pytestmark = pytest.mark.unit


def decode_case(raw: bytes, rule: str):
    """A group, its candidates' natural lengths and the engine's timing, from 40 bytes (see test_selection)."""
    num_keep = 1 + raw[0] % 6
    num_candidates = num_keep + raw[1] % (13 - num_keep)
    num_long = raw[2] % num_keep if raw[3] % 2 else 0  # half the groups shortest-only
    cap = 8 + raw[4] % 25
    # Lengths in [1, cap + 4]: above the cap the candidate is truncated at it; ties are common.
    natural = [1 + b % (cap + 4) for b in raw[5 : 5 + num_candidates]]
    slots = 1 + raw[18] % (num_candidates + 2)  # often fewer than the candidates: siblings queue
    every = 1 + raw[19] % 3
    lag = raw[20] % 3
    return dict(
        plan=GroupPlan(num_candidates, num_keep, num_long),
        rule=rule,
        natural=natural,
        cap=cap,
        slots=slots,
        every=every,
        lag=lag,
        seed=int.from_bytes(raw[21:25], "little"),
    )


def cases(rule: str):
    return st.binary(min_size=40, max_size=40).map(lambda raw: decode_case(raw, rule))


def simulate(plan, rule, natural, cap, slots, every, lag, seed):
    """Drive an EarlyStop through one simulated group; returns (stop, trace) with what the engine did."""
    rnd = random.Random(seed)
    num = plan.num_candidates
    final = [min(length, cap) for length in natural]
    truncated = [length > cap for length in natural]
    stop = EarlyStop(plan, rule)
    tokens = [0] * num
    queue = list(range(num))
    rnd.shuffle(queue)  # admission order need not be the index order
    running: set[int] = set()
    done: set[int] = set()
    landing: dict[int, int] = {}  # aborted candidate -> decode steps left before its abort lands
    stop_order: list[int] = []  # candidates in the order their finishes reached the actor
    invariant_ok = True
    released = None  # stop.releasable() the first time it was not None

    def abort(indices):
        for j in indices:
            landing[j] = lag

    while len(done) < num:
        # Aborts that land now: the engine stops the request with its partial output; a queued one (0 tokens) is
        # dropped before it could be admitted.
        for j in [j for j, left in landing.items() if left == 0 or j in queue]:
            del landing[j]
            running.discard(j)
            if j in queue:
                queue.remove(j)
            stop.on_aborted(j, tokens[j])
            done.add(j)
        while queue and len(running) < slots:
            running.add(queue.pop(0))
        for j in landing:
            landing[j] -= 1  # every one still travelling is running: it decodes one more step
        events = []
        for j in sorted(running):
            tokens[j] += 1
            if tokens[j] == final[j]:
                events.append(("finish", j))
            elif tokens[j] % every == 0:
                events.append(("progress", j))
        rnd.shuffle(events)  # outputs of one step reach the actor in any order
        for kind, j in events:
            if kind == "finish":
                running.discard(j)
                done.add(j)
                landing.pop(j, None)
                stop_order.append(j)
                abort(stop.on_finish(j, final[j], truncated[j]))
            else:
                abort(stop.on_progress(j, tokens[j]))
            now = stop.releasable()
            if released is not None:
                invariant_ok &= now == released  # once final, the released members never change
            elif now is not None:
                released = now
            bound = stop.selector.release_key()
            if rule == "exclude" and plan.shortest_only and bound is not None and stop.kept is None:
                # After every event, nothing pending runs past the bound: queued siblings hold nobody back.
                invariant_ok &= all((stop.progress[r], r) <= bound for r in stop.pending)
    return stop, dict(
        final=final, truncated=truncated, stop_order=stop_order, invariant_ok=invariant_ok, released=released
    )


def check_common(stop, trace, case):
    plan = case["plan"]
    assert not stop.pending and stop.kept is not None and len(stop.kept) == plan.num_keep
    assert trace["invariant_ok"]
    results = stop.results()
    # The engine's record builds, and its kept set agrees with selection over the finished candidates (racers too).
    outcome = GroupOutcome.from_results(plan, results, truncated_rule=case["rule"], kept=stop.kept)
    assert outcome.kept == stop.kept
    # Released members (§3(g): the short end of a dual-end group, the whole kept set of a shortest-only one) are kept,
    # and a dual-end group's are its K shortest valid candidates by (length, index).
    released = trace["released"]
    if plan.shortest_only:
        assert released == stop.kept
    else:
        valid = sorted((trace["final"][j], j) for j in range(plan.num_candidates) if not trace["truncated"][j])
        if len(valid) >= plan.num_short:
            assert released == tuple(sorted(j for _, j in valid[: plan.num_short]))
        else:
            assert released is None
    for j in stop.raced:
        # A racer stopped by itself: its true length, not a censored one.
        assert not outcome.aborted[j] and outcome.lengths[j] == trace["final"][j]
    return outcome


@given(cases("exclude"))
def test_exclude_keeps_what_running_every_candidate_would_keep(case):
    stop, trace = simulate(**case)
    outcome = check_common(stop, trace, case)
    plan = case["plan"]
    oracle = select_dual_end(trace["final"], trace["truncated"], plan.num_keep, plan.num_long)
    assert list(stop.kept) == oracle
    if not plan.shortest_only:
        assert outcome.num_aborted == 0  # dual-end groups run every candidate to the end
    for j in stop.aborted:
        limit, partial = stop.abort_limits[j], outcome.lengths[j]
        # The partial length is a lower bound of the true one, and the candidate was already useless at its limit:
        # some M valid candidates order before (limit, j), so it could never have been kept.
        assert partial <= trace["final"][j]
        valid_before = [i for i in range(plan.num_candidates) if not trace["truncated"][i] and i != j]
        assert sum((trace["final"][i], i) < (limit, j) for i in valid_before) >= plan.num_keep
        # It decoded past its limit only while its progress was not yet reported (up to `every` steps, the current
        # one included: a sibling's finish can reach the actor before this candidate's output of the same step) and
        # while its abort travelled (`lag` steps). With every = 1 and lag = 0 that is one engine step.
        assert limit <= partial <= limit + case["every"] + case["lag"]


@given(cases("long_end"))
def test_long_end_keeps_the_first_to_stop_or_the_ranked_ends(case):
    stop, trace = simulate(**case)
    check_common(stop, trace, case)
    plan = case["plan"]
    if plan.shortest_only:
        # The reference rule: the first M candidates to stop, whatever their lengths or truncation.
        assert sorted(stop.kept) == sorted(trace["stop_order"][: plan.num_keep])
        for j in stop.aborted:  # useless from the release on: it decoded on only while unreported or travelling
            limit = stop.abort_limits[j]
            assert limit <= stop.progress[j] <= limit + case["every"] + case["lag"]
    else:
        full = select_dual_end(trace["final"], trace["truncated"], plan.num_keep, plan.num_long, "long_end")
        assert list(stop.kept) == full and not stop.abort_limits


def test_queued_sibling_no_longer_keeps_the_others_decoding():
    # Plan (4 candidates, keep 1, shortest-only). Candidate 0 finishes at 3 tokens: the release bound is (3, 0).
    # Candidate 1 runs at 5 tokens and is aborted at once; candidate 2 runs at 3 tokens: (3, 2) > (3, 0), aborted;
    # candidate 3 still waits with 0 tokens and could finish shorter, so it stays and the kept set is not final.
    stop = EarlyStop(GroupPlan(4, 1, 0))
    assert stop.on_progress(1, 5) == [] and stop.on_progress(2, 3) == []
    assert stop.on_finish(0, 3, False) == [1, 2]
    assert stop.abort_limits == {1: 5, 2: 3}  # a finish lowered the bound below their progress: limit = progress
    assert stop.kept is None and stop.pending == {3}
    # Candidate 3 gets admitted and decodes; at 3 tokens (3, 3) > (3, 0): aborted on its own progress, limit 3.
    assert stop.on_progress(3, 2) == []
    assert stop.on_progress(3, 3) == [3]
    assert stop.abort_limits[3] == 3 and stop.kept == (0,)


def test_ties_order_by_index():
    # Plan (3, keep 1): candidate 1 finishes at 4 tokens. Candidate 0 at 4 tokens orders before (4, 1): it could
    # still finish at 4 and win the tie, so it runs; candidate 2 at 4 tokens orders after: aborted with limit 4.
    stop = EarlyStop(GroupPlan(3, 1, 0))
    stop.on_progress(0, 4)
    stop.on_progress(2, 4)
    assert stop.on_finish(1, 4, False) == [2]
    assert stop.on_progress(0, 5) == [0]  # now past (4, 1): limit = 4 + 1 = 5
    assert stop.abort_limits == {2: 4, 0: 5} and stop.kept == (1,)


def test_race_counts_as_finished_not_censored():
    # Plan (3, keep 1): candidate 0 finishes at 2; candidate 1 (at 6 tokens) is aborted, but stops by itself at 7
    # before the abort lands. It is finished (uncensored, length 7) and not kept; candidate 2's abort lands at 4.
    plan = GroupPlan(3, 1, 0)
    stop = EarlyStop(plan)
    stop.on_progress(1, 6)
    stop.on_progress(2, 4)
    assert stop.on_finish(0, 2, False) == [1, 2]
    assert stop.kept == (0,)
    assert stop.on_finish(1, 7, False) == []
    stop.on_aborted(2, 4)
    assert stop.raced == {1} and stop.aborted == [2]
    outcome = GroupOutcome.from_results(plan, stop.results(), kept=stop.kept)
    assert outcome.lengths == (2, 7, 4) and outcome.aborted == (False, False, True)
    assert outcome.censored == (False, False, True) and outcome.kept == (0,)


def test_long_end_releases_at_the_nth_stop_of_any_kind():
    # Plan (4, keep 2, shortest-only), long_end: candidate 3 hits the cap (truncated, 10), candidate 1 stops at 6:
    # two stops, so both are kept and candidates 0 and 2 are aborted, even though 0 (at 2 tokens) might be shorter.
    stop = EarlyStop(GroupPlan(4, 2, 0), "long_end")
    stop.on_progress(0, 2)
    assert stop.on_finish(3, 10, True) == []
    assert stop.on_finish(1, 6, False) == [0, 2]
    assert stop.kept == (1, 3) and stop.abort_limits == {0: 2, 2: 0}


def test_early_stop_rejects_bad_events():
    stop = EarlyStop(GroupPlan(3, 1, 0))
    with pytest.raises(ValueError, match="index=3 is out of range"):
        stop.on_progress(3, 1)
    stop.on_progress(0, 4)
    with pytest.raises(ValueError, match="tokens=2 after 4; progress is cumulative"):
        stop.on_progress(0, 2)
    with pytest.raises(ValueError, match="candidate 1 reported an abort but was not aborted"):
        stop.on_aborted(1, 3)
    stop.on_finish(1, 2, False)
    with pytest.raises(ValueError, match="index=1 finished twice"):
        stop.on_finish(1, 2, False)
    with pytest.raises(ValueError, match=r"candidates \[2\] are still pending"):
        stop.results()
    with pytest.raises(ValueError, match="truncated_rule='drop'"):
        EarlyStop(GroupPlan(3, 1, 0), "drop")


def test_short_end_is_released_once_no_pending_sibling_can_displace_it():
    # Dual-end plan (5 candidates, keep 3, long 1): K = 2. Candidates 0 and 4 decode, 1 waits in the queue (0 tokens).
    stop = EarlyStop(GroupPlan(5, 3, 1))
    stop.on_progress(0, 6)
    stop.on_progress(4, 9)
    stop.on_finish(2, 3, False)
    stop.on_finish(3, 4, False)
    # The K-th shortest is b = (4, 3). The queued candidate 1 could still end shorter: nothing is released.
    assert stop.releasable() is None
    stop.on_progress(1, 4)
    assert stop.releasable() is None  # (4, 1) < (4, 3): it could end at 4 and win the tie by index
    stop.on_progress(1, 5)
    assert stop.releasable() == (2, 3)  # every pending (progress, index) orders after b
    assert stop.kept is None and stop.pending == {0, 1, 4}  # the long end is open until everything stops
    # Shortest-only: the whole kept set, at its release.
    stop = EarlyStop(GroupPlan(3, 1, 0))
    stop.on_progress(1, 4)
    assert stop.releasable() is None
    assert stop.on_finish(0, 2, False) == [1]
    assert stop.releasable() is None  # candidate 2 has 0 tokens and could still finish shorter
    assert stop.on_progress(2, 3) == [2]
    assert stop.releasable() == stop.kept == (0,)
