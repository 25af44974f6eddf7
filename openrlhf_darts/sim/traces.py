"""Where candidate lengths come from: recorded rollouts, or synthetic heavy-tailed families.

Every trace is a list of per-prompt length distributions with one method, ``sample(rng, k)``, which draws k independent
candidates as ``(length, truncated)`` pairs.

- ``EmpiricalPrompt``: a prompt's recorded candidates, drawn with replacement (bootstrap). ``load_recorded`` builds
  them from a rollout benchmark's ``report.json``, pooling every group that ran all of its candidates to the end
  (baseline and dual-end groups; a shortest-only group only if it aborted nothing), because aborted lengths are partial
  and would bias the pool short.
- ``LogNormalPrompt``: log-normal lengths, capped; a draw at or above the cap is truncated there.
- ``LengthFamily``: prompts whose median length varies log-normally across prompts and whose within-prompt log-std is
  uniform in a range. The three ``FAMILIES`` are **synthetic, chosen by us, NOT taken from the paper** (it reports no
  length percentiles): their caps follow the reference scripts (8k responses for 7B, 16k for larger models,
  DARTS_SPEC.md §6); their medians and spreads are guesses in which, as DARTS assumes, the spread inside a prompt
  (log-std 0.4-1.2, so a 12-candidate group's max/median is often 3x or more) is larger than the spread between
  prompts (log-std 0.4-0.45), and about 1% of responses hit the cap. A single step's speedup depends strongly on that
  balance: with a large spread between prompts some prompt has most of its candidates at the cap, and every variant
  waits for it (``python -m openrlhf_darts.sim --prompt-spread`` shows the sensitivity).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass

Candidate = tuple[int, bool]  # (generated tokens, truncated at the cap)


@dataclass(frozen=True)
class EmpiricalPrompt:
    """A prompt's recorded (length, truncated) candidates; ``sample`` draws with replacement."""

    pool: tuple[Candidate, ...]  # [P] observed candidates that ran to their end

    def __post_init__(self) -> None:
        if len(self.pool) == 0:
            raise ValueError("pool=() is empty; a recorded prompt needs at least one candidate that ran to its end")
        for j, (length, cut) in enumerate(self.pool):
            if isinstance(length, bool) or not isinstance(length, int) or length < 0 or not isinstance(cut, bool):
                raise ValueError(f"pool[{j}]={(length, cut)!r}; expected (length >= 0 as int, truncated as bool)")

    def sample(self, rng: random.Random, k: int) -> list[Candidate]:
        return [self.pool[rng.randrange(len(self.pool))] for _ in range(k)]


@dataclass(frozen=True)
class LogNormalPrompt:
    """Lengths exp(N(log median, sigma^2)) rounded, at least 1; draws at or above ``cap`` become (cap, truncated)."""

    median: float  # tokens
    sigma: float  # within-prompt std of log length
    cap: int  # response length limit (max_tokens)

    def __post_init__(self) -> None:
        if not (self.median > 0 and math.isfinite(self.median)):
            raise ValueError(f"median={self.median!r} is not a positive finite number of tokens")
        if not (self.sigma >= 0 and math.isfinite(self.sigma)):
            raise ValueError(f"sigma={self.sigma!r} is not a finite std >= 0")
        if isinstance(self.cap, bool) or not isinstance(self.cap, int) or self.cap < 1:
            raise ValueError(f"cap={self.cap!r} is not a positive int")

    def sample(self, rng: random.Random, k: int) -> list[Candidate]:
        out = []
        for _ in range(k):
            length = max(1, round(math.exp(rng.gauss(math.log(self.median), self.sigma))))
            out.append((self.cap, True) if length >= self.cap else (length, False))
        return out


@dataclass(frozen=True)
class LengthFamily:
    """Synthetic per-prompt log-normal lengths with prompt-level spread (module docstring: NOT from the paper)."""

    name: str
    cap: int  # response cap in tokens
    median: float  # median over prompts of the per-prompt median length
    prompt_spread: float  # std over prompts of log(per-prompt median)
    sigma_low: float  # within-prompt log-std, uniform in [sigma_low, sigma_high]
    sigma_high: float

    def __post_init__(self) -> None:
        if not 0 <= self.sigma_low <= self.sigma_high:
            raise ValueError(f"sigma range [{self.sigma_low}, {self.sigma_high}] is empty or negative")
        LogNormalPrompt(self.median, self.sigma_high, self.cap)  # checks median and cap

    def prompts(self, num: int, rng: random.Random) -> list[LogNormalPrompt]:
        return [
            LogNormalPrompt(
                median=math.exp(rng.gauss(math.log(self.median), self.prompt_spread)),
                sigma=rng.uniform(self.sigma_low, self.sigma_high),
                cap=self.cap,
            )
            for _ in range(num)
        ]

    def describe(self) -> str:
        return (
            f"{self.name}: cap {self.cap}, per-prompt median lognormal(median {self.median:g}, log-std "
            f"{self.prompt_spread:g}), within-prompt log-std U[{self.sigma_low:g}, {self.sigma_high:g}] (synthetic)"
        )


FAMILIES: dict[str, LengthFamily] = {
    "7b-like": LengthFamily("7b-like", cap=8192, median=1000.0, prompt_spread=0.4, sigma_low=0.4, sigma_high=1.0),
    "14b-like": LengthFamily("14b-like", cap=16384, median=1600.0, prompt_spread=0.45, sigma_low=0.45, sigma_high=1.1),
    "32b-like": LengthFamily("32b-like", cap=16384, median=2000.0, prompt_spread=0.45, sigma_low=0.5, sigma_high=1.2),
}

def load_recorded(path: str | os.PathLike) -> list[EmpiricalPrompt]:
    """One ``EmpiricalPrompt`` per benchmark prompt, pooling its groups that aborted nothing (module docstring)."""
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    variants = report.get("variants") if isinstance(report, dict) else None
    if not variants:
        raise ValueError(
            f"{os.fspath(path)!r} has no 'variants'; expected a report.json of openrlhf_darts.bench.rollout"
        )
    # Tail batching's groups are left out: its kept groups are the race's fastest (biased short) and its aborted ones
    # are partial; they also cover more prompts than the other variants.
    variants = {name: v for name, v in variants.items() if v.get("path") != "generate_tail_group"}
    num_prompts = {len(v["groups"]) for v in variants.values()}
    if len(num_prompts) != 1:
        raise ValueError(f"{os.fspath(path)!r}: variants have different prompt counts {sorted(num_prompts)}")
    pools: list[list[Candidate]] = [[] for _ in range(num_prompts.pop())]
    for variant in variants.values():
        for i, group in enumerate(variant["groups"]):
            if not any(group["aborted"]):
                pools[i].extend((int(length), bool(cut)) for length, cut in zip(group["lengths"], group["truncated"]))
    return [EmpiricalPrompt(tuple(pool)) for pool in pools]


def resolve_trace(
    name_or_path: str, num_prompts: int, rng: random.Random, prompt_spread: float | None = None
) -> tuple[list, str]:
    """``num_prompts`` prompt distributions and a description, from a family name or a ``report.json`` path.

    ``prompt_spread`` overrides a family's spread between prompts (a sensitivity knob). Recorded prompts are reused
    round robin after a shuffle when more prompts are asked for than were recorded.
    """
    if name_or_path in FAMILIES:
        family = FAMILIES[name_or_path]
        if prompt_spread is not None:
            if not (prompt_spread >= 0 and math.isfinite(prompt_spread)):
                raise ValueError(f"--prompt-spread={prompt_spread!r} is not a finite log-std >= 0")
            family = dataclasses.replace(family, prompt_spread=prompt_spread)
        return family.prompts(num_prompts, rng), family.describe()
    if os.path.isfile(name_or_path):
        recorded = load_recorded(name_or_path)
        order = list(range(len(recorded)))
        rng.shuffle(order)
        chosen = [recorded[order[i % len(order)]] for i in range(num_prompts)]
        sizes = sorted(len(p.pool) for p in recorded)
        return chosen, (
            f"recorded {name_or_path}: {len(recorded)} prompts, {sizes[0]}-{sizes[-1]} full-length candidates each, "
            "bootstrapped"
        )
    raise ValueError(
        f"--trace {name_or_path!r} is neither a family {sorted(FAMILIES)} nor an existing report.json; "
        "pass one of the families or the report of python -m openrlhf_darts.bench.rollout"
    )


def sample_batch(prompts: Sequence, k: int, rng: random.Random) -> list[list[Candidate]]:
    """k candidates per prompt, in prompt order (one rng stream, so a seed fixes the whole batch)."""
    return [prompt.sample(rng, k) for prompt in prompts]
