"""Rollout-time cost model (DARTS_SPEC.md §3(e)).

With candidate lengths sorted and l_[0] = 0, a batch of R sequences decodes in

    T = sum_{m=1..R} (l_[m] - l_[m-1]) * PTL(R - m + 1)

because between two consecutive finishes every running sequence advances by the same number of decode steps, each
costing PTL at the current concurrency. We apply it per engine, to all sequences that engine runs in a step. PTL is a
profiled table of decode-step seconds against running sequences; context-length effects are ignored to first order.
"""

import bisect
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from openrlhf_darts.core._checks import (
    check_choice,
    check_flags,
    check_int,
    check_lengths,
    check_real,
    check_sequence,
)
from openrlhf_darts.core.types import TRUNCATED_RULES, GroupPlan


@dataclass(frozen=True)
class PerTokenLatency:
    """Decode-step seconds against the number of running sequences, PTL(d, r) of §3(e), interpolated linearly.

    Constant below the first point; beyond the last, extended along the last segment (constant for a single point). The
    last segment must not slope down, so extrapolation never predicts a shorter step at higher concurrency.
    """

    points: tuple[
        tuple[int, float], ...
    ]  # [P] (num_running, seconds per decode step), num_running strictly increasing
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False)  # free-form provenance: model, device, tp

    def __post_init__(self) -> None:
        check_sequence("points", self.points)
        if len(self.points) == 0:
            raise ValueError("points=[] is empty; expected at least one (num_running, seconds) pair")
        points = []
        for j, point in enumerate(self.points):
            check_sequence(f"points[{j}]", point)
            if len(point) != 2:
                raise ValueError(f"points[{j}]={point!r} has {len(point)} entries; expected (num_running, seconds)")
            running = check_int(f"points[{j}] num_running", point[0], minimum=1)
            seconds = check_real(f"points[{j}] seconds", point[1])
            if seconds <= 0.0:
                raise ValueError(f"points[{j}] seconds={point[1]!r} is not positive; a decode step takes time")
            if points and running <= points[-1][0]:
                raise ValueError(
                    f"points[{j}] num_running={running} does not exceed the previous {points[-1][0]}; "
                    "expected strictly increasing num_running"
                )
            points.append((running, seconds))
        if len(points) >= 2 and points[-1][1] < points[-2][1]:
            raise ValueError(
                f"the last segment {points[-2]} -> {points[-1]} slopes down, so extrapolating it predicts ever faster "
                "steps at higher concurrency; re-profile, or end the table with a point at least as slow"
            )
        if not isinstance(self.meta, Mapping):
            raise TypeError(f"meta={self.meta!r} has type {type(self.meta).__name__}; expected a dict")
        object.__setattr__(self, "points", tuple(points))
        object.__setattr__(self, "meta", dict(self.meta))

    def __call__(self, num_running: int | float) -> float:
        x = check_real("num_running", num_running, minimum=0.0)
        points = self.points
        if x <= points[0][0] or len(points) == 1:
            return points[0][1]
        j = bisect.bisect_left(points, x, key=lambda point: point[0])
        if j < len(points) and points[j][0] == x:
            return points[j][1]
        j = min(j, len(points) - 1)  # beyond the last point: extend the last segment
        (x0, y0), (x1, y1) = points[j - 1], points[j]
        return y0 + (x - x0) * (y1 - y0) / (x1 - x0)

    def to_dict(self) -> dict[str, Any]:
        return {"points": [[r, s] for r, s in self.points], "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PerTokenLatency":
        if not isinstance(data, Mapping):
            raise TypeError(f"data has type {type(data).__name__}; expected a dict with keys ['points', 'meta']")
        extra = [key for key in data if key not in ("points", "meta")]
        if "points" not in data or extra:
            raise ValueError(
                f"profile keys {sorted(data)} are wrong; expected 'points' and optionally 'meta' (unknown: {extra})"
            )
        return cls(points=tuple(tuple(p) for p in check_sequence("points", data["points"])), meta=data.get("meta", {}))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "PerTokenLatency":
        """Read a profile saved by ``save`` (the ``--darts.latency_profile`` file)."""
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"latency profile {os.fspath(path)!r} is not valid JSON: {e}") from e
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")


def rollout_time(lengths: Sequence[int], per_token_latency: Callable[[int], float]) -> float:
    """T = sum_{m=1..R} (l_[m] - l_[m-1]) * PTL(R - m + 1) over the sorted lengths, l_[0] = 0 (§3(e)); 0.0 if empty."""
    lengths = check_lengths("lengths", lengths)
    if not callable(per_token_latency):
        raise TypeError(f"per_token_latency={per_token_latency!r} is not callable; expected a PerTokenLatency")
    return _rollout_time(lengths, per_token_latency)


def _rollout_time(lengths: Sequence[int], per_token_latency: Callable[[int], float]) -> float:
    # Unchecked body of rollout_time, shared with the budget simulation where the lengths are known good.
    ordered = sorted(lengths)
    total, previous = 0.0, 0
    for m, length in enumerate(ordered, start=1):
        if length > previous:  # equal lengths add no decode steps; skip the PTL call
            seconds = per_token_latency(len(ordered) - m + 1)
            if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
                raise ValueError(
                    f"per_token_latency({len(ordered) - m + 1}) returned {seconds!r}; expected finite seconds >= 0"
                )
            total += (length - previous) * seconds
            previous = length
    return total


def effective_lengths(
    lengths: Sequence[int], truncated: Sequence[bool], plan: GroupPlan, truncated_rule: str = "exclude"
) -> list[int]:
    """Tokens each candidate actually decodes under ``plan`` (§3(e), utility mode), in the lockstep model.

    Dual-end groups run every candidate to the end. A shortest-only group stops at its release length and every
    candidate decodes min(l_j, release):

    - ``exclude``: the release is the num_keep-th shortest untruncated length; with fewer than num_keep untruncated
      candidates nothing is released early and all run fully;
    - ``long_end`` (``--darts.truncated long_end``, the reference code): the group stops after its first num_keep stops
      of any kind, so the release is the num_keep-th shortest length of all, truncated ones included.

    Truncated candidates count at the length they reached. When they sit at the group's cap, as the engine reports
    them (no finish is longer than the cap), both rules give the same release: the rule then changes what a dual-end
    group keeps (``selection._select``), not what any group decodes.
    """
    if not isinstance(plan, GroupPlan):
        raise TypeError(f"plan={plan!r} has type {type(plan).__name__}; expected a GroupPlan")
    lengths = check_lengths("lengths", lengths)
    truncated = check_flags("truncated", truncated, len(lengths), "lengths")
    check_choice("truncated_rule", truncated_rule, TRUNCATED_RULES)
    if len(lengths) != plan.num_candidates:
        raise ValueError(
            f"lengths has {len(lengths)} entries but plan.num_candidates={plan.num_candidates}; "
            "expected one per candidate"
        )
    return _effective_lengths(lengths, truncated, plan, truncated_rule)


def _effective_lengths(
    lengths: Sequence[int], truncated: Sequence[bool], plan: GroupPlan, truncated_rule: str = "exclude"
) -> list[int]:
    if not plan.shortest_only:
        return list(lengths)
    if truncated_rule == "long_end":
        stops = sorted(lengths)  # the first num_keep to stop, truncated or not
    else:
        stops = sorted(length for length, cut in zip(lengths, truncated) if not cut)
        if len(stops) < plan.num_keep:
            return list(lengths)
    release = stops[plan.num_keep - 1]
    return [min(length, release) for length in lengths]


def engine_rollout_time(
    groups: Sequence[tuple[Sequence[int], Sequence[bool], GroupPlan]],
    per_token_latency: Callable[[int], float],
    truncated_rule: str = "exclude",
) -> float:
    """Rollout time of one engine: the effective lengths of all its groups pooled into ``rollout_time`` (§3(e))."""
    pooled: list[int] = []
    for g, group in enumerate(check_sequence("groups", groups)):
        check_sequence(f"groups[{g}]", group)
        if len(group) != 3:
            raise ValueError(f"groups[{g}] has {len(group)} entries; expected (lengths, truncated, plan)")
        pooled.extend(effective_lengths(*group, truncated_rule))
    return rollout_time(pooled, per_token_latency)
