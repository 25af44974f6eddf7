"""`darts/*` metrics from one step's group outcomes. Standard library only; every key is documented in docs/metrics.md."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from openrlhf_darts.core.length_fit import fit_outcome
from openrlhf_darts.core.percentile import nearest_rank
from openrlhf_darts.core.types import Decision, GroupOutcome


def _percentile(sorted_values: Sequence[int], q: float) -> float:
    """Nearest-rank percentile (`core.percentile`), 0.0 for a step without such lengths."""
    return nearest_rank(sorted_values, q) if sorted_values else 0.0


def outcome_metrics(outcomes: Sequence[GroupOutcome], max_tokens: int | None = None) -> dict[str, float]:
    """Decisions and length distributions of one step's groups (STYLE.md "Metrics namespace").

    Length figures never mix finished and aborted candidates: an aborted candidate's partial length is a lower bound
    on its true length, so `darts/finished_length_*` cover the candidates that stopped by themselves (EOS, or the
    length cap at the cap) and `darts/aborted_length_mean` the aborted ones, reported as the lower bound it is. Both
    understate the policy's length distribution in groups that abort (the aborted are the long ones).
    `darts/length_mean_estimate` is the censoring-aware estimate of the all-candidate mean beside them: each group's
    censored log-normal fit (``length_fit.fit_outcome``, aborted and truncated lengths as lower bounds, clipped at the
    group's cap) gives its mean length, weighted by the group's candidates. ``max_tokens`` is the cap of records that
    do not carry their own (``length_fit.outcome_cap``).
    """
    if not outcomes:
        return {}
    candidates = [o.plan.num_candidates for o in outcomes]
    finished_lengths = sorted(o.lengths[j] for o in outcomes for j in range(o.plan.num_candidates) if not o.aborted[j])
    aborted_lengths = [o.lengths[j] for o in outcomes for j in range(o.plan.num_candidates) if o.aborted[j]]
    kept_lengths = sorted(length for o in outcomes for length in o.kept_lengths)
    num_all = sum(candidates)
    metrics = {
        "darts/candidates_mean": sum(candidates) / len(candidates),
        "darts/candidates_max": float(max(candidates)),
        "darts/shortest_only_ratio": sum(o.plan.shortest_only for o in outcomes) / len(outcomes),
        "darts/aborted_ratio": sum(o.num_aborted for o in outcomes) / num_all,
        "darts/censored_ratio": sum(sum(o.censored) for o in outcomes) / num_all,
        "darts/underfilled_groups": float(sum(o.underfilled for o in outcomes)),
        "darts/tokens_generated": float(sum(o.tokens_generated for o in outcomes)),
        "darts/tokens_kept": float(sum(o.tokens_kept for o in outcomes)),
        "darts/wasted_tokens": float(sum(o.tokens_wasted for o in outcomes)),
        "darts/kept_truncated_ratio": sum(o.truncated[j] for o in outcomes for j in o.kept) / len(kept_lengths),
        "darts/kept_length_mean": sum(kept_lengths) / len(kept_lengths),
        # Every group has at least n candidates that were not aborted (core/types.GroupOutcome), so these exist.
        "darts/finished_length_mean": sum(finished_lengths) / len(finished_lengths),
        "darts/kept_length_max": float(kept_lengths[-1]),
        "darts/finished_length_max": float(finished_lengths[-1]),
        "darts/kept_length_p90": _percentile(kept_lengths, 90),
        "darts/finished_length_p90": _percentile(finished_lengths, 90),
        "darts/group_release_s_mean": statistics.fmean(o.release_s for o in outcomes),
    }
    if aborted_lengths:
        # Lower bounds (partial lengths); absent in a step that aborted nothing rather than a misleading 0.
        metrics["darts/aborted_length_mean"] = sum(aborted_lengths) / len(aborted_lengths)
    # Every group has a fit: at least n of its candidates were not aborted, and if all of those were truncated their
    # length is the cap, so the fit is a point mass there (length_fit.fit_lengths).
    fits = [fit_outcome(o, max_tokens) for o in outcomes]
    metrics["darts/length_mean_estimate"] = sum(n * fit.mean for n, fit in zip(candidates, fits)) / num_all
    for reason in Decision:
        if reason is not Decision.KEEP:
            metrics[f"darts/drop_{reason.value}"] = float(sum(d is reason for o in outcomes for d in o.decisions))
    return metrics
