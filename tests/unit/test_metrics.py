"""`metrics.outcome_metrics`: length figures that keep finished and aborted (lower-bound) lengths apart."""

import pytest

from openrlhf_darts.core.types import CandidateResult, GroupOutcome, GroupPlan
from openrlhf_darts.metrics import outcome_metrics

pytestmark = pytest.mark.unit


def _outcomes():
    # Group A, plan (4, keep 2, shortest-only): finished 3 and 5 (kept), aborted at 6 and 7 (partial lengths).
    a = GroupOutcome.from_results(
        GroupPlan(4, 2, 0),
        [CandidateResult(0, 3, False, False), CandidateResult(1, 5, False, False)]
        + [CandidateResult(2, 6, False, True), CandidateResult(3, 7, False, True)],
    )
    # Group B, plan (3, keep 2, long 1), long_end: 4 and 9 valid, 20 truncated -> K=1 keeps 4, L=1 keeps the 20.
    b = GroupOutcome.from_results(
        GroupPlan(3, 2, 1),
        [
            CandidateResult(0, 4, False, False),
            CandidateResult(1, 9, False, False),
            CandidateResult(2, 20, True, False),
        ],
        truncated_rule="long_end",
    )
    return a, b


def test_finished_and_aborted_lengths_are_reported_apart():
    metrics = outcome_metrics(_outcomes())
    # Finished (stopped by themselves): 3, 5, 4, 9, 20 -> mean 41 / 5 = 8.2, max 20; p90 nearest rank ceil(4.5) = 5th
    # of (3, 4, 5, 9, 20) = 20. The aborted partial lengths 6 and 7 are not in them.
    assert metrics["darts/finished_length_mean"] == pytest.approx(8.2)
    assert metrics["darts/finished_length_max"] == 20.0 and metrics["darts/finished_length_p90"] == 20.0
    # Aborted: (6 + 7) / 2 = 6.5, a lower bound.
    assert metrics["darts/aborted_length_mean"] == 6.5
    # Kept: 3, 5, 4, 20; one of the four is truncated.
    assert metrics["darts/kept_length_mean"] == 8.0 and metrics["darts/kept_truncated_ratio"] == 0.25
    assert not any(key.startswith("darts/all_length") for key in metrics)


def test_no_aborted_length_without_aborts():
    metrics = outcome_metrics([_outcomes()[1]])
    assert "darts/aborted_length_mean" not in metrics
    # Nothing aborted: the finished figures cover every candidate, 4, 9, 20 -> mean 11.
    assert metrics["darts/finished_length_mean"] == 11.0 and metrics["darts/aborted_ratio"] == 0.0
