"""Records of §3(a)-(c): GroupPlan, Decision, CandidateResult, GroupOutcome."""

import dataclasses
import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openrlhf_darts.core.selection import select_dual_end
from openrlhf_darts.core.types import CandidateResult, Decision, GroupOutcome, GroupPlan

pytestmark = pytest.mark.unit


# ---- GroupPlan


def test_plan_properties():
    plan = GroupPlan(num_candidates=12, num_keep=8, num_long=1)
    assert (plan.num_short, plan.shortest_only) == (7, False)  # K = 8 - 1
    pruned = GroupPlan(16, 8, 0)
    assert (pruned.num_short, pruned.shortest_only) == (8, True)
    assert GroupPlan.uniform(8) == GroupPlan(8, 8, 0)


@pytest.mark.parametrize(
    "args, error, message",
    [
        ((8, 9, 1), ValueError, "num_keep=9 exceeds num_candidates=8; a plan needs num_candidates >= num_keep"),
        ((8, 0, 0), ValueError, "num_keep=0 is below 1"),
        ((8, 8, 8), ValueError, "num_long=8 is outside [0, num_keep) = [0, 8)"),
        ((8, 8, -1), ValueError, "num_long=-1 is outside [0, num_keep) = [0, 8)"),
        ((8.0, 8, 1), TypeError, "num_candidates=8.0 has type float"),
        ((8, True, 0), TypeError, "num_keep=True has type bool"),
        ((8, 8, None), TypeError, "num_long=None"),
    ],
)
def test_plan_rejects_bad_values(args, error, message):
    with pytest.raises(error) as info:
        GroupPlan(*args)
    assert message in str(info.value)


def test_plan_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        GroupPlan(8, 8, 0).num_long = 1


def test_decision_values_are_metric_suffixes():
    assert [d.value for d in Decision] == ["keep", "aborted", "truncated", "not_selected"]
    assert f"darts/drop_{Decision.NOT_SELECTED.value}" == "darts/drop_not_selected"
    assert Decision("aborted") is Decision.ABORTED and Decision.ABORTED == "aborted"  # str enum


# ---- CandidateResult


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(index=-1, length=3, truncated=False, aborted=False), ValueError, "index=-1"),
        (dict(index=0, length=-3, truncated=False, aborted=False), ValueError, "length=-3"),
        (dict(index=0, length=3.5, truncated=False, aborted=False), TypeError, "length=3.5"),
        (dict(index=0, length=3, truncated=1, aborted=False), TypeError, "truncated=1"),
        (dict(index=2, length=3, truncated=True, aborted=True), ValueError, "index=2 is both truncated and aborted"),
    ],
)
def test_candidate_result_rejects_bad_values(kwargs, error, message):
    with pytest.raises(error) as info:
        CandidateResult(**kwargs)
    assert message in str(info.value)


# ---- GroupOutcome


def decode_outcome_case(raw: bytes):
    """(plan, results) from 36 bytes: M' in [1, 16], each candidate finished, truncated or aborted, and at least
    num_keep of them not aborted, as the early-stop rule guarantees (§3(c)). Bytes, not lists: see test_selection."""
    num_candidates = 1 + raw[0] % 16
    fates = ["finished" if b < 128 else "truncated" if b < 192 else "aborted" for b in raw[4 : 4 + num_candidates]]
    num_finished = sum(f != "aborted" for f in fates)
    if num_finished == 0:
        fates[0], num_finished = "finished", 1
    num_keep = 1 + raw[1] % num_finished
    plan = GroupPlan(num_candidates, num_keep, raw[2] % num_keep)
    results = [
        CandidateResult(j, raw[20 + j] % 41, fate == "truncated", fate == "aborted") for j, fate in enumerate(fates)
    ]
    random.Random(raw[3]).shuffle(results)  # the engine reports results in completion order, not by index
    return plan, results


outcome_cases = st.binary(min_size=36, max_size=36).map(decode_outcome_case)


@given(outcome_cases)
def test_from_results_selects_over_finished_candidates(case):
    plan, results = case
    outcome = GroupOutcome.from_results(plan, results)
    by_index = sorted(results, key=lambda r: r.index)
    finished = [r.index for r in by_index if not r.aborted]
    expected = [
        finished[p]
        for p in select_dual_end(
            [by_index[j].length for j in finished],
            [by_index[j].truncated for j in finished],
            plan.num_keep,
            plan.num_long,
        )
    ]
    assert list(outcome.kept) == expected
    assert outcome.lengths == tuple(r.length for r in by_index)
    for r in by_index:
        kept = r.index in outcome.kept
        assert outcome.decisions[r.index] is (
            Decision.KEEP
            if kept
            else Decision.ABORTED if r.aborted else Decision.TRUNCATED if r.truncated else Decision.NOT_SELECTED
        )
    valid = sum(1 for r in by_index if not r.aborted and not r.truncated)
    assert outcome.underfilled == (valid < plan.num_keep)
    # Token accounting: wasted = everything generated for candidates that are not kept.
    dropped = sum(r.length for r in by_index if r.index not in outcome.kept)
    assert outcome.tokens_generated == sum(r.length for r in by_index)
    assert outcome.tokens_kept == sum(r.length for r in by_index if r.index in outcome.kept)
    assert outcome.tokens_wasted == dropped
    assert outcome.num_aborted == sum(r.aborted for r in by_index)
    assert outcome.censored == tuple(r.aborted or r.truncated for r in by_index)
    assert outcome.kept_lengths == tuple(by_index[j].length for j in outcome.kept)


@given(outcome_cases)
def test_outcome_dict_round_trip_is_exact_including_json(case):
    plan, results = case
    outcome = GroupOutcome.from_results(plan, results, elapsed_s=2.5, release_s=1.25)
    assert GroupOutcome.from_dict(outcome.to_dict()) == outcome
    assert GroupOutcome.from_dict(json.loads(json.dumps(outcome.to_dict()))) == outcome


def test_hand_example_outcome():
    # Plan (5 candidates, keep 3, long 1), K = 2. Candidate 4 aborted at 6 tokens, candidate 3 truncated at 20.
    # Finished and valid, sorted by (length, index): (5,0) (9,1) (12,2). K=2 short -> 0, 1; L=1 long -> 2.
    plan = GroupPlan(5, 3, 1)
    results = [
        CandidateResult(4, 6, truncated=False, aborted=True),
        CandidateResult(0, 5, truncated=False, aborted=False),
        CandidateResult(3, 20, truncated=True, aborted=False),
        CandidateResult(2, 12, truncated=False, aborted=False),
        CandidateResult(1, 9, truncated=False, aborted=False),
    ]
    outcome = GroupOutcome.from_results(plan, results, elapsed_s=3.0, release_s=3.0)
    assert outcome.kept == (0, 1, 2)
    assert outcome.decisions == (Decision.KEEP,) * 3 + (Decision.TRUNCATED, Decision.ABORTED)
    assert not outcome.underfilled  # 3 valid >= num_keep 3
    # generated = 5+9+12+20+6 = 52; kept = 5+9+12 = 26; wasted = 52-26 = 26 (truncated 20 + aborted partial 6)
    assert (outcome.tokens_generated, outcome.tokens_kept, outcome.tokens_wasted) == (52, 26, 26)
    assert outcome.censored == (False, False, False, True, True)
    assert outcome.kept_lengths == (5, 9, 12)


def test_hand_example_underfilled_outcome():
    # Plan (3, keep 2, long 0): one valid (index 1), two truncated; fill takes the truncated of lowest index, 0.
    plan = GroupPlan(3, 2, 0)
    results = [
        CandidateResult(0, 30, True, False),
        CandidateResult(1, 4, False, False),
        CandidateResult(2, 30, True, False),
    ]
    outcome = GroupOutcome.from_results(plan, results)
    assert outcome.kept == (0, 1) and outcome.underfilled
    assert outcome.decisions == (Decision.KEEP, Decision.KEEP, Decision.TRUNCATED)


def base_outcome() -> GroupOutcome:
    # Plan (4, keep 2, long 1): lengths 5, 9, 3, 7 all valid; sorted (3,2) (5,0) (7,3) (9,1): K=1 -> 2, L=1 -> 1.
    results = [CandidateResult(j, length, False, False) for j, length in enumerate([5, 9, 3, 7])]
    return GroupOutcome.from_results(GroupPlan(4, 2, 1), results, elapsed_s=2.0, release_s=1.0)


def test_base_outcome_is_as_computed():
    outcome = base_outcome()
    assert outcome.kept == (1, 2)
    assert outcome.decisions == (Decision.NOT_SELECTED, Decision.KEEP, Decision.KEEP, Decision.NOT_SELECTED)


@pytest.mark.parametrize(
    "changes, error, message",
    [
        (dict(lengths=(5, 9, 3)), ValueError, "lengths has 3 entries but plan.num_candidates=4"),
        (dict(lengths=[5, 9, 3, 7]), TypeError, "lengths=[5, 9, 3, 7] has type list; expected a tuple"),
        (dict(lengths=(5, -9, 3, 7)), ValueError, "lengths[1]=-9"),
        (dict(kept=(1,)), ValueError, "kept=(1,) has 1 indices; expected exactly num_keep=2"),
        (dict(kept=(2, 1)), ValueError, "kept=(2, 1) is not strictly ascending"),
        (dict(kept=(1, 4)), ValueError, "kept[1]=4 is out of range"),
        (dict(underfilled=True), ValueError, "underfilled=True but 4 untruncated candidates finished"),
        (dict(release_s=3.0), ValueError, "release_s=3.0 exceeds elapsed_s=2.0"),
        (dict(elapsed_s=float("nan")), ValueError, "elapsed_s=nan is not finite"),
        (dict(plan=GroupPlan(4, 3, 1)), ValueError, "kept=(1, 2) has 2 indices; expected exactly num_keep=3"),
        (
            dict(decisions=(Decision.TRUNCATED, Decision.KEEP, Decision.KEEP, Decision.NOT_SELECTED)),
            ValueError,
            "decisions[0]='truncated' but candidate 0",
        ),
        (
            dict(decisions=("not_selected", Decision.KEEP, Decision.KEEP, Decision.NOT_SELECTED)),
            TypeError,
            "decisions[0]='not_selected' is not a Decision",
        ),
        (
            dict(aborted=(False, True, False, False)),
            ValueError,
            "kept[0]=1 is an aborted candidate",
        ),
        (
            dict(truncated=(False, True, False, False)),
            ValueError,
            "kept=(1, 2) includes a truncated candidate although 3 untruncated candidates finished",
        ),
    ],
)
def test_outcome_rejects_inconsistent_fields(changes, error, message):
    with pytest.raises(error) as info:
        dataclasses.replace(base_outcome(), **changes)
    assert message in str(info.value)


def test_outcome_rejects_underfilled_group_that_drops_a_valid_candidate():
    # Plan (3, keep 2, long 0) with one valid candidate (index 2) that is not kept: the fill branch must keep it.
    with pytest.raises(ValueError, match=r"leaves out untruncated candidates \[2\]"):
        GroupOutcome(
            plan=GroupPlan(3, 2, 0),
            lengths=(9, 9, 1),
            truncated=(True, True, False),
            aborted=(False, False, False),
            kept=(0, 1),
            decisions=(Decision.KEEP, Decision.KEEP, Decision.NOT_SELECTED),
            underfilled=True,
        )


def test_from_results_rejects_bad_coverage():
    plan = GroupPlan(3, 2, 0)
    ok = [CandidateResult(j, 5, False, False) for j in range(3)]
    with pytest.raises(ValueError, match=r"results lack candidate indices \[2\]"):
        GroupOutcome.from_results(plan, ok[:2])
    with pytest.raises(ValueError, match="candidate index=1 is reported twice"):
        GroupOutcome.from_results(plan, ok + [ok[1]])
    with pytest.raises(ValueError, match=r"result index=3 is out of range; expected a candidate index in \[0, 3\)"):
        GroupOutcome.from_results(plan, ok + [CandidateResult(3, 5, False, False)])
    aborted = [ok[0], CandidateResult(1, 2, False, True), CandidateResult(2, 2, False, True)]
    with pytest.raises(ValueError, match="only 1 of 3 candidates finished without abort but num_keep=2"):
        GroupOutcome.from_results(plan, aborted)
    with pytest.raises(TypeError, match="expected CandidateResult records"):
        GroupOutcome.from_results(plan, [(0, 5, False, False)])
    with pytest.raises(TypeError, match="expected a GroupPlan"):
        GroupOutcome.from_results((3, 2, 0), ok)


def test_from_dict_rejects_bad_dicts():
    data = base_outcome().to_dict()
    with pytest.raises(ValueError, match=r"missing keys \['kept'\] and unknown keys \['keep'\]"):
        GroupOutcome.from_dict({**{k: v for k, v in data.items() if k != "kept"}, "keep": [1, 2]})
    with pytest.raises(ValueError, match=r"decisions\[0\]='dropped' is not one of"):
        GroupOutcome.from_dict({**data, "decisions": ["dropped", "keep", "keep", "not_selected"]})
    with pytest.raises(ValueError, match="num_keep=5 exceeds num_candidates=4"):
        GroupOutcome.from_dict({**data, "plan": {"num_candidates": 4, "num_keep": 5, "num_long": 1}})


# ---- --darts.truncated: the rule is recorded, and long_end keeps truncated candidates as the longest


def test_long_end_outcome_keeps_a_truncated_long_end_and_records_the_rule():
    # Plan (4, keep 2, long 1); candidate 2 truncated at 30. long_end order (0,5,0) (0,7,3) (0,9,1) (1,30,2):
    # K=1 -> 0, L=1 -> 2, so the truncated candidate is the long sample though 3 valid ones finished.
    plan = GroupPlan(4, 2, 1)
    results = [CandidateResult(j, length, j == 2, False) for j, length in enumerate([5, 9, 30, 7])]
    outcome = GroupOutcome.from_results(plan, results, truncated_rule="long_end")
    assert outcome.kept == (0, 2) and not outcome.underfilled and outcome.truncated_rule == "long_end"
    assert outcome.to_dict()["truncated_rule"] == "long_end"
    assert GroupOutcome.from_dict(json.loads(json.dumps(outcome.to_dict()))) == outcome
    # The same record under exclude is rejected: a truncated candidate kept while enough valid ones finished.
    with pytest.raises(ValueError, match="includes a truncated candidate although 3 untruncated"):
        dataclasses.replace(outcome, truncated_rule="exclude")
    # A dual-end long_end record must be the selection: keeping the valid 9 instead of the truncated 30 is wrong.
    with pytest.raises(ValueError, match=r"kept=\(0, 1\) but truncated_rule='long_end' keeps \(0, 2\)"):
        dataclasses.replace(
            outcome,
            kept=(0, 1),
            decisions=(Decision.KEEP, Decision.KEEP, Decision.TRUNCATED, Decision.NOT_SELECTED),
        )
    with pytest.raises(ValueError, match="truncated_rule='drop' is not one of"):
        dataclasses.replace(outcome, truncated_rule="drop")


def test_long_end_shortest_only_takes_the_engines_kept_set():
    # Plan (3, keep 1, shortest-only), long_end: candidate 2 stopped first (truncated, 12); candidate 0 finished at
    # 4 while its abort was in flight. The first to stop is kept, which the results cannot tell: kept= is required.
    plan = GroupPlan(3, 1, 0)
    results = [
        CandidateResult(0, 4, False, False),
        CandidateResult(1, 3, False, True),
        CandidateResult(2, 12, True, False),
    ]
    with pytest.raises(ValueError, match="keeps the first num_keep=1 to stop; pass the engine's kept set"):
        GroupOutcome.from_results(plan, results, truncated_rule="long_end")
    outcome = GroupOutcome.from_results(plan, results, truncated_rule="long_end", kept=[2])
    assert outcome.kept == (2,) and outcome.decisions == (Decision.NOT_SELECTED, Decision.ABORTED, Decision.KEEP)


def test_from_results_checks_the_engines_kept_set():
    # exclude, plan (3, keep 1, shortest-only): the shortest valid is candidate 1 (3 tokens), not candidate 0.
    plan = GroupPlan(3, 1, 0)
    results = [CandidateResult(j, length, False, False) for j, length in enumerate([4, 3, 9])]
    assert GroupOutcome.from_results(plan, results, kept=[1]).kept == (1,)
    with pytest.raises(
        ValueError, match=r"kept=\(0,\) differs from the selection over the finished candidates, \(1,\)"
    ):
        GroupOutcome.from_results(plan, results, kept=[0])


def test_from_dict_reads_records_written_before_the_truncated_rule():
    # Saved benchmark reports predate --darts.truncated; "exclude" was the only rule then.
    data = base_outcome().to_dict()
    del data["truncated_rule"]
    assert GroupOutcome.from_dict(data) == base_outcome()


def test_max_tokens_is_recorded_validated_and_round_trips():
    # The hand example's group ran under a cap of 20: candidate 3 was truncated exactly there.
    plan = GroupPlan(5, 3, 1)
    results = [
        CandidateResult(0, 5, False, False),
        CandidateResult(1, 9, False, False),
        CandidateResult(2, 12, False, False),
        CandidateResult(3, 20, True, False),
        CandidateResult(4, 6, False, True),
    ]
    outcome = GroupOutcome.from_results(plan, results, max_tokens=20)
    assert outcome.max_tokens == 20 and outcome.to_dict()["max_tokens"] == 20
    assert GroupOutcome.from_dict(json.loads(json.dumps(outcome.to_dict()))) == outcome
    assert GroupOutcome.from_results(plan, results).max_tokens is None  # unknown cap
    with pytest.raises(ValueError, match="candidate 3 is truncated at length 20 but max_tokens=24"):
        GroupOutcome.from_results(plan, results, max_tokens=24)
    with pytest.raises(ValueError, match="lengths\\[3\\]=20 exceeds max_tokens=19"):
        dataclasses.replace(outcome, max_tokens=19)
    with pytest.raises(ValueError, match="max_tokens=0 is below 1"):
        dataclasses.replace(base_outcome(), max_tokens=0)
    with pytest.raises(TypeError, match="max_tokens=True has type bool"):
        dataclasses.replace(base_outcome(), max_tokens=True)
    with pytest.raises(TypeError, match="max_tokens=20.0 has type float"):
        GroupOutcome.from_dict({**outcome.to_dict(), "max_tokens": 20.0})


def test_from_dict_reads_records_written_before_the_cap_was_recorded():
    data = base_outcome().to_dict()
    del data["max_tokens"]
    assert GroupOutcome.from_dict(data) == base_outcome() and GroupOutcome.from_dict(data).max_tokens is None
