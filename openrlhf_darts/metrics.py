"""`darts/*` metrics from one step's group outcomes. Standard library only; every key is documented in docs/metrics.md."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from openrlhf_darts.core.types import Decision, GroupOutcome


def _percentile(sorted_values: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in [0, 100])."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(N q / 100), at least 1
    return float(sorted_values[int(rank) - 1])


def outcome_metrics(outcomes: Sequence[GroupOutcome]) -> dict[str, float]:
    """Decisions and length distributions of one step's groups (STYLE.md "Metrics namespace")."""
    if not outcomes:
        return {}
    candidates = [o.plan.num_candidates for o in outcomes]
    all_lengths = sorted(length for o in outcomes for length in o.lengths)
    kept_lengths = sorted(length for o in outcomes for length in o.kept_lengths)
    num_all = len(all_lengths)
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
        "darts/kept_length_mean": sum(kept_lengths) / len(kept_lengths),
        "darts/all_length_mean": sum(all_lengths) / num_all,
        "darts/kept_length_max": float(kept_lengths[-1]),
        "darts/all_length_max": float(all_lengths[-1]),
        "darts/kept_length_p90": _percentile(kept_lengths, 90),
        "darts/all_length_p90": _percentile(all_lengths, 90),
        "darts/group_release_s_mean": statistics.fmean(o.release_s for o in outcomes),
    }
    for reason in Decision:
        if reason is not Decision.KEEP:
            metrics[f"darts/drop_{reason.value}"] = float(sum(d is reason for o in outcomes for d in o.decisions))
    return metrics
