"""`metrics.outcome_metrics`: length figures that keep finished and aborted (lower-bound) lengths apart."""

import dataclasses
import math
import random
import statistics
from statistics import NormalDist

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
    # The censoring-aware mean sits above the finished mean here: group A's aborted 6 and 7 count as lower bounds.
    assert metrics["darts/length_mean_estimate"] > metrics["darts/finished_length_mean"]


def test_no_aborted_length_without_aborts():
    metrics = outcome_metrics([_outcomes()[1]])
    assert "darts/aborted_length_mean" not in metrics
    # Nothing aborted: the finished figures cover every candidate, 4, 9, 20 -> mean 11.
    assert metrics["darts/finished_length_mean"] == 11.0 and metrics["darts/aborted_ratio"] == 0.0


# ---- darts/length_mean_estimate: the censoring-aware all-candidate mean (issue 11 item 6)


def clipped_lognormal_mean(mu, s, cap=None, steps=20_000):
    """E[min(L, cap)] where log(1 + L) ~ Normal(mu, s^2), by Simpson's rule on the density of y = log(1 + L) up to
    the cap's y (or mu + 12 s), plus cap times the normal tail mass above it."""
    normal = NormalDist(mu, s)
    low = mu - 12 * s
    high = mu + 12 * s if cap is None else min(math.log1p(cap), mu + 12 * s)
    h = (high - low) / steps
    total = 0.0
    for i in range(steps + 1):
        y = low + i * h
        weight = 1 if i in (0, steps) else 4 if i % 2 else 2
        total += weight * math.expm1(y) * normal.pdf(y)
    tail = 0.0 if cap is None else cap * (1.0 - normal.cdf(math.log1p(cap)))
    return total * h / 3 + tail


def uncensored(plan, lengths, cap):
    return GroupOutcome.from_results(
        plan, [CandidateResult(j, length, False, False) for j, length in enumerate(lengths)], max_tokens=cap
    )


def test_length_mean_estimate_of_uncensored_groups_is_the_fitted_clipped_lognormal_mean():
    # Uncensored, the fit is y = log(1 + length) ~ Normal(sample mean, sample std (Bessel)) of the group's y, so its
    # mean length clipped at the cap 100 is an integral we compute here; groups weigh by their candidates (4 and 6).
    a = uncensored(GroupPlan(4, 2, 1), [12, 30, 55, 80], 100)
    b = uncensored(GroupPlan(6, 4, 1), [5, 9, 14, 40, 61, 90], 100)
    means = []
    for group in (a, b):
        ys = [math.log1p(length) for length in group.lengths]
        means.append(clipped_lognormal_mean(statistics.fmean(ys), statistics.stdev(ys), cap=100))
    expected = (4 * means[0] + 6 * means[1]) / 10
    assert outcome_metrics([a, b])["darts/length_mean_estimate"] == pytest.approx(expected, rel=1e-7)
    # The clip matters here: the unclipped means are larger (the fitted tails pass 100 tokens).
    unclipped = []
    for group in (a, b):
        ys = [math.log1p(length) for length in group.lengths]
        unclipped.append(clipped_lognormal_mean(statistics.fmean(ys), statistics.stdev(ys)))
    assert (4 * unclipped[0] + 6 * unclipped[1]) / 10 > expected + 1.0
    # Records without their own cap: clipped at the max_tokens given, or not at all without one.
    old = [dataclasses.replace(group, max_tokens=None) for group in (a, b)]
    assert outcome_metrics(old, max_tokens=100)["darts/length_mean_estimate"] == pytest.approx(expected, rel=1e-7)
    assert outcome_metrics(old)["darts/length_mean_estimate"] == pytest.approx(
        (4 * unclipped[0] + 6 * unclipped[1]) / 10, rel=1e-7
    )


def engine_outcome(plan, true_lengths, cap):
    """What the engine reports for true lengths: truncated at the cap; a shortest-only group's surplus aborted one
    token past its release length (the n-th shortest valid length)."""
    seen = [min(length, cap) for length in true_lengths]
    truncated = [length >= cap for length in true_lengths]
    valid = sorted(length for length, cut in zip(seen, truncated) if not cut)
    release = valid[plan.num_keep - 1] if plan.shortest_only and len(valid) >= plan.num_keep else None
    results = []
    for j, (length, cut) in enumerate(zip(seen, truncated)):
        if release is not None and length > release + 1:
            results.append(CandidateResult(j, release + 1, False, True))
        else:
            results.append(CandidateResult(j, length, cut, False))
    return GroupOutcome.from_results(plan, results, max_tokens=cap)


def test_length_mean_estimate_recovers_the_mean_that_aborts_hide():
    # 200 synthetic log-normal groups (medians 60-200, log-std 0.2-0.8, cap 400): half shortest-only (12 keeping 8,
    # the surplus aborted), half dual-end (10 keeping 8). The truth is the mean of every candidate's true length
    # clipped at the cap; the finished-candidate mean understates it, the censored fit's estimate does not.
    rng = random.Random(0)
    outcomes, truth = [], []
    for g in range(200):
        plan = GroupPlan(12, 8, 0) if g % 2 == 0 else GroupPlan(10, 8, 1)
        median, sigma = rng.uniform(60, 200), rng.uniform(0.2, 0.8)
        lengths = [max(1, round(rng.lognormvariate(math.log(median), sigma))) for _ in range(plan.num_candidates)]
        outcomes.append(engine_outcome(plan, lengths, 400))
        truth += [min(length, 400) for length in lengths]
    metrics = outcome_metrics(outcomes)
    true_mean = statistics.fmean(truth)
    assert metrics["darts/aborted_ratio"] > 0.15  # precondition: aborts hide the long candidates
    assert metrics["darts/finished_length_mean"] / true_mean < 0.92  # ... and bias the finished mean low
    # Seed 0 gives 0.996 (the finished mean: 0.889); 2% is the sampling error allowed to an estimator of a mean
    # over 2,200 candidates, against the finished mean's 11% bias.
    assert metrics["darts/length_mean_estimate"] / true_mean == pytest.approx(1.0, abs=0.02)
