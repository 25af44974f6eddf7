"""Tail batching in the simulator: steps in sequence, with the product's deferred queue and race (core/tail_batching.py).

Each step launches ceil(r N) prompts, n candidates each: the deferred queue first, then fresh prompts from a stream of
prompt distributions; every launch draws fresh candidates (a deferred prompt is re-generated, from the same length
distribution). Prompts go to engines by the samples generator's least-loaded rule (``replay.assign_engines``, n each).

Time, per engine, by the cost model of DARTS_SPEC.md §3(e): all of the engine's candidates start together, and between
two finishes every running candidate advances by the same number of decode steps at PTL(running). A group completes
when its longest candidate does. The step trains the pinned groups (``core.tail_batching.pinned_flags``) and the first
N - pinned unpinned groups to complete; at t1, the moment the last of those completes, every other unpinned group is
aborted (its candidates count the tokens they decoded by t1). From t1 on only pinned candidates run, faster, on their
engines; the step ends when the last trained group completes. Aborted prompts are deferred (``defer``, one more
deferral each) or dropped (``drop``).

Figures are averaged over ``steps`` steps after ``warmup`` steps (the queue and its pinning need a few steps to reach
their steady state). Dynamic filtering and the epoch's last steps (where nothing is aborted and the queue drains) are
not modelled.
"""

from __future__ import annotations

import bisect
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from openrlhf_darts.core.tail_batching import DeferredPrompt, DeferredQueue, launch_count, pinned_flags
from openrlhf_darts.sim.replay import assign_engines
from openrlhf_darts.sim.traces import Candidate

ABORTED_PROMPTS = ("defer", "drop")
DEFAULT_WARMUP = 5  # steps before measuring, without a deferral cap: the queue fills in one, its mix settles in a few


@dataclass(frozen=True)
class TailStepResult:
    """One simulated tail-batching step."""

    rollout_time_s: float  # until the last trained group completed
    decode_steps: float  # most decode steps any engine ran in the step
    tokens_generated: float  # full lengths of trained groups, decoded-by-abort lengths of aborted ones
    tokens_kept: int  # the trained groups' candidates
    kept_length_mean: float
    launched: int  # prompts launched (N r)
    trained: int  # prompts trained (N)
    aborted: int
    pinned: int
    resumed: int  # launched from the deferred queue


def _finish_times(lengths: Sequence[float], latency: Callable[[int], float]) -> tuple[list[float], list[float]]:
    """(sorted distinct lengths, the time each is reached) when all ``lengths`` start together (§3(e))."""
    marks, times = [0.0], [0.0]
    ordered = sorted(lengths)
    for m, length in enumerate(ordered):
        if length > marks[-1]:
            times.append(times[-1] + (length - marks[-1]) * latency(len(ordered) - m))
            marks.append(length)
    return marks, times


def _steps_by(marks: list[float], times: list[float], t: float, latency, running: Callable[[float], int]) -> float:
    """Decode steps done by time ``t`` on the timeline (linear between finishes, at PTL(running at that step))."""
    j = bisect.bisect_right(times, t) - 1
    if j == len(times) - 1:
        return marks[-1]
    return marks[j] + (t - times[j]) / latency(running(marks[j]))


def simulate_tail_step(
    groups: Sequence[Sequence[Candidate]],
    pinned: Sequence[bool],
    target: int,
    num_engines: int,
    latency: Callable[[int], float],
) -> tuple[TailStepResult, list[int], list[int]]:
    """One step (module docstring) over the launched ``groups``; returns (result, trained indices, aborted indices)."""
    if len(groups) != len(pinned) or len(groups) < target or sum(pinned) > target:
        raise ValueError(
            f"{len(groups)} groups, {len(pinned)} pinned flags ({sum(pinned)} set) for target={target}; expected one "
            "flag per group, at least target groups and at most target pinned"
        )
    engine_of = assign_engines([len(g) for g in groups], num_engines)
    per_engine: list[list[int]] = [[] for _ in range(num_engines)]
    for g, group in enumerate(groups):
        per_engine[engine_of[g]].extend(length for length, _ in group)
    timelines = [_finish_times(lengths, latency) for lengths in per_engine]

    def reached(engine: int, steps: float) -> float:
        marks, times = timelines[engine]
        return times[bisect.bisect_left(marks, steps)]

    completion = [reached(engine_of[g], max(length for length, _ in group)) for g, group in enumerate(groups)]
    unpinned = sorted((completion[g], g) for g in range(len(groups)) if not pinned[g])
    first = [g for _, g in unpinned[: target - sum(pinned)]]
    t1 = max((completion[g] for g in first), default=0.0)
    trained = sorted(first + [g for g in range(len(groups)) if pinned[g]])
    aborted = sorted(g for _, g in unpinned[target - sum(pinned) :])

    # Steps each engine decoded by t1, then the pinned candidates that still run continue alone.
    decoded_at_t1 = []
    for engine, lengths in enumerate(per_engine):
        marks, times = timelines[engine]
        decoded_at_t1.append(_steps_by(marks, times, t1, latency, lambda s, ls=lengths: sum(x > s for x in ls)))
    end = t1
    for engine in range(num_engines):
        s1 = decoded_at_t1[engine]
        rest = [length - s1 for g in trained if pinned[g] and engine_of[g] == engine for length, _ in groups[g]]
        rest = [r for r in rest if r > 0]
        if rest:
            end = max(end, t1 + rollout_time_float(rest, latency))
    tokens_kept = sum(length for g in trained for length, _ in groups[g])
    wasted = sum(min(length, decoded_at_t1[engine_of[g]]) for g in aborted for length, _ in groups[g])
    longest_trained = max(length for g in trained for length, _ in groups[g])
    longest_aborted = max(
        (min(length, decoded_at_t1[engine_of[g]]) for g in aborted for length, _ in groups[g]), default=0
    )
    result = TailStepResult(
        rollout_time_s=end,
        decode_steps=max(longest_trained, longest_aborted),
        tokens_generated=tokens_kept + wasted,
        tokens_kept=tokens_kept,
        kept_length_mean=tokens_kept / sum(len(groups[g]) for g in trained),
        launched=len(groups),
        trained=len(trained),
        aborted=len(aborted),
        pinned=sum(pinned),
        resumed=0,
    )
    return result, trained, aborted


def rollout_time_float(lengths: Sequence[float], latency: Callable[[int], float]) -> float:
    """``core.cost_model.rollout_time`` for non-negative real lengths (remaining decode steps after a partial step)."""
    marks, times = _finish_times(lengths, latency)
    return times[-1]


def simulate_tail_batching(
    stream: Sequence,
    n: int,
    batch: int,
    num_engines: int,
    latency: Callable[[int], float],
    launch_ratio: float = 1.25,
    aborted_prompts: str = "defer",
    max_deferrals: int | None = None,
    steps: int = 3,
    warmup: int | None = None,
    seed: int = 0,
) -> dict:
    """Mean figures over ``steps`` steps after ``warmup`` steps of tail batching (default: ``max_deferrals + 1``, or
    ``DEFAULT_WARMUP`` without a cap).

    ``stream`` holds prompt distributions (``sim.traces``), drawn in order as fresh prompts; it must hold enough of
    them. Keys match ``replay.simulate``'s per-variant summary: ``candidates_mean`` is candidates generated per trained
    prompt (n r in a step without deferred prompts) and ``early_stop_ratio`` the share of launched groups aborted.
    """
    if aborted_prompts not in ABORTED_PROMPTS:
        raise ValueError(f"aborted_prompts={aborted_prompts!r} is not one of {list(ABORTED_PROMPTS)}")
    for name, value in (("n", n), ("batch", batch), ("steps", steps), ("max_deferrals", max_deferrals or 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is not a positive int")
    if warmup is None:
        warmup = DEFAULT_WARMUP if max_deferrals is None else max_deferrals + 1
    count = launch_count(launch_ratio, batch)
    rng = random.Random(seed * 1_000_003 + 104_729)
    queue, position, results = DeferredQueue(), 0, []
    for step in range(warmup + steps):
        resumed = queue.take(count)
        need = count - len(resumed)
        if position + need > len(stream):
            raise ValueError(
                f"the prompt stream holds {len(stream)} prompts; step {step + 1} needs {position + need}. Pass at least "
                f"{count * (warmup + steps)} prompts"
            )
        launched = resumed + [DeferredPrompt(str(i), None, None, 0) for i in range(position, position + need)]
        position += need
        pinned = pinned_flags(
            [p.deferrals for p in launched], batch, max_deferrals if aborted_prompts == "defer" else None
        )
        groups = [stream[int(p.prompt)].sample(rng, n) for p in launched]
        result, _, aborted = simulate_tail_step(groups, pinned, batch, num_engines, latency)
        if aborted_prompts == "defer":
            queue.extend([DeferredPrompt(launched[g].prompt, None, None, launched[g].deferrals + 1) for g in aborted])
        if step >= warmup:
            results.append(dict(asdict(result), resumed=len(resumed)))
    summary = {
        key: statistics.fmean(r[key] for r in results)
        for key in ("rollout_time_s", "decode_steps", "tokens_generated", "tokens_kept", "kept_length_mean")
    }
    summary["tokens_wasted"] = summary["tokens_generated"] - summary["tokens_kept"]
    summary["candidates_mean"] = n * statistics.fmean(r["launched"] / r["trained"] for r in results)
    summary["early_stop_ratio"] = statistics.fmean(r["aborted"] / r["launched"] for r in results)
    summary["wasted_share"] = summary["tokens_wasted"] / summary["tokens_generated"]
    summary["pinned_mean"] = statistics.fmean(r["pinned"] for r in results)
    summary["resumed_mean"] = statistics.fmean(r["resumed"] for r in results)
    summary["settings"] = {
        "launch_ratio": launch_ratio,
        "aborted_prompts": aborted_prompts,
        "max_deferrals": max_deferrals,
        "warmup_steps": warmup,
    }
    summary["steps"] = results
    return summary
