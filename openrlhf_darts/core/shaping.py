"""How hard a GRPO step pushes response length, measured on the samples it trains on (DARTS_SPEC.md §4). Standard
library only.

A GRPO update raises the log-probability of each kept sample j of a group in proportion to its advantage
A_j = (r_j - mean r) / (std r + eps) (`group_norm`, std with n - 1, as upstream computes it). Had the update simply
re-weighted the kept samples by (1 + eta A_j), their mean length would move by eta times

    push = mean_j (l_j - mean l) A_j,

the covariance of length and advantage within the kept set (Price's selection differential). It is < 0 when the kept
set's wrong answers are its longer ones. Selection can only change the step's push through which candidates it keeps:
push = corr(l, r) * std(l) * (n - 1) / n for a group whose rewards vary, so a kept set with a wider length spread
(dual-end) amplifies whatever length-correctness relation the policy already has, and a narrower one (shortest-only)
damps it. A group whose rewards are all equal has no advantage and pushes nothing. This is a first-order indicator of
the direction of the length update, not the update itself (per-token loss weighting, clipping and the shared network
decide that).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from openrlhf_darts.core._checks import check_lengths, check_sequence

EPS = 1e-9  # upstream's group_norm: (r - mean) / (std + 1e-9)


def group_advantages(rewards: Sequence[float]) -> list[float]:
    """Upstream's `group_norm` advantages of one group: (r - mean) / (sample std + 1e-9); all 0 for equal rewards."""
    rewards = [float(r) for r in check_sequence("rewards", rewards)]
    if len(rewards) < 2:
        raise ValueError(f"rewards has {len(rewards)} value(s); a group-relative advantage needs a group of >= 2")
    if not all(math.isfinite(r) for r in rewards):
        raise ValueError(f"rewards={rewards!r} holds a non-finite value; a failed reward must fail the step")
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1))
    return [(r - mean) / (std + EPS) for r in rewards]


def length_push(lengths: Sequence[int], rewards: Sequence[float]) -> float:
    """mean_j (l_j - mean l) A_j over one group's kept samples (tokens per unit of update; module docstring)."""
    lengths = check_lengths("lengths", lengths)
    advantages = group_advantages(rewards)
    if len(lengths) != len(advantages):
        raise ValueError(f"lengths has {len(lengths)} values and rewards {len(advantages)}; pass one per sample")
    mean = sum(lengths) / len(lengths)
    return sum((length - mean) * a for length, a in zip(lengths, advantages)) / len(lengths)


def length_correctness_corr(lengths: Sequence[int], rewards: Sequence[float]) -> float | None:
    """Pearson correlation of length and reward within one group; None when either does not vary."""
    lengths, rewards = check_lengths("lengths", lengths), [float(r) for r in check_sequence("rewards", rewards)]
    if len(lengths) != len(rewards):
        raise ValueError(f"lengths has {len(lengths)} values and rewards {len(rewards)}; pass one per sample")
    mean_l, mean_r = sum(lengths) / len(lengths), sum(rewards) / len(rewards)
    dl, dr = [x - mean_l for x in lengths], [r - mean_r for r in rewards]
    sll, srr = sum(x * x for x in dl), sum(r * r for r in dr)
    if sll == 0 or srr == 0:
        return None
    return sum(x * r for x, r in zip(dl, dr)) / math.sqrt(sll * srr)


def step_length_push(lengths: Sequence[int], rewards: Sequence[float], group_size: int) -> dict[str, float | None]:
    """A step's kept samples, groups of `group_size` in order (as upstream's advantage code reshapes them):

    - `push`: mean over groups of `length_push` (groups with equal rewards count as 0);
    - `push_mixed`: the same over groups whose rewards vary (None if there are none);
    - `corr`: mean over those groups of `length_correctness_corr` where length varies too (None if none);
    - `mixed_share`: share of groups whose rewards vary.
    """
    lengths, rewards = check_lengths("lengths", lengths), list(check_sequence("rewards", rewards))
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size={group_size!r}; pass the group size n >= 2 (--rollout.n_samples_per_prompt)")
    if len(lengths) != len(rewards) or not lengths or len(lengths) % group_size:
        raise ValueError(
            f"{len(lengths)} lengths and {len(rewards)} rewards do not form whole groups of {group_size}; pass one "
            "of each per kept sample, group by group"
        )
    pushes, mixed, corrs = [], [], []
    for start in range(0, len(lengths), group_size):
        group_l, group_r = lengths[start : start + group_size], rewards[start : start + group_size]
        push = length_push(group_l, group_r)
        pushes.append(push)
        if len(set(float(r) for r in group_r)) > 1:
            mixed.append(push)
            corr = length_correctness_corr(group_l, group_r)
            if corr is not None:
                corrs.append(corr)
    return {
        "push": sum(pushes) / len(pushes),
        "push_mixed": sum(mixed) / len(mixed) if mixed else None,
        "corr": sum(corrs) / len(corrs) if corrs else None,
        "mixed_share": len(mixed) / len(pushes),
    }
