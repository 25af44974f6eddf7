"""`TailBatchingConfig` and the `--tail_batching.*` flag group: tail batching as a comparison arm (DARTS_SPEC.md §1, §5).

Tail batching (RollPacker, arXiv 2509.21009) treats the long tail as a property of prompts: each step launches
ceil(r * B) prompts, trains on the first B whose groups complete and aborts the rest (`core/tail_batching.py`). It is
the baseline the paper compares DARTS with besides VeRL, so it runs with DARTS off, on its own flag group.

Standard library only, like `openrlhf_darts.config`: the flags are registered on upstream's parser next to `--darts.*`
(`upstream.darts_flags_in_upstream_cli`), become `args.tail_batching` after `hierarchize`, and are validated by
`TailBatchingConfig.from_args` before Ray starts. Off means exactly upstream; no flag is ever rewritten.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields

ABORTED_PROMPTS = ("defer", "drop")

# (flag, type, default, symbol, help)
_FLAGS: list[tuple[str, type, object, str, str]] = [
    ("launch_ratio", float, 1.25, "r", "prompts launched per step = ceil(r * --rollout.batch_size); r >= 1"),
    (
        "max_deferrals",
        int,
        None,
        "-",
        "with defer: a prompt aborted this many times is pinned at its next launch (trained whatever its finish "
        "order); none: no cap, a deferred prompt races again every step and is trained by the end of its epoch",
    ),
]
_CHOICES: list[tuple[str, tuple[str, ...], str, str, str]] = [
    (
        "aborted_prompts",
        ABORTED_PROMPTS,
        "defer",
        "-",
        "defer: an aborted prompt goes back in front of the next step's fresh prompts; drop: it is discarded",
    ),
]
_SWITCHES: list[tuple[str, str]] = [
    ("enable", "turn tail batching on (DARTS must be off); off means exactly upstream"),
]


def add_tail_batching_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Register the `--tail_batching.*` group on an (upstream) parser; returns the group."""
    group = parser.add_argument_group(
        "tail batching", "RollPacker-style tail batching, the comparison arm (launch r*B prompts, train the first B)"
    )
    for name, help_text in _SWITCHES:
        group.add_argument(
            f"--tail_batching.{name}", action="store_true", default=False, help=f"{help_text} (default: off)"
        )
    for name, choices, default, symbol, help_text in _CHOICES:
        group.add_argument(
            f"--tail_batching.{name}",
            choices=choices,
            default=default,
            help=f"[{symbol}] {help_text} (default: %(default)s)",
        )
    for name, kind, default, symbol, help_text in _FLAGS:
        group.add_argument(
            f"--tail_batching.{name}",
            type=kind,
            default=default,
            help=f"[{symbol}] {help_text} (default: {_shown(default)})",
        )
    return group


def flag_table() -> list[tuple[str, str, str, str]]:
    """(flag, default, symbol, help) for every tail-batching flag, in registration order; docs/flags.md lists them."""
    rows = [(f"--tail_batching.{n}", "False", "-", h) for n, h in _SWITCHES]
    rows += [(f"--tail_batching.{n}", d, s, h) for n, _, d, s, h in _CHOICES]
    rows += [(f"--tail_batching.{n}", _shown(d), s, h) for n, _, d, s, h in _FLAGS]
    return rows


def _shown(default: object) -> str:
    return "none" if default is None else str(default)


def _defaults() -> dict[str, object]:
    values: dict[str, object] = {name: False for name, _ in _SWITCHES}
    values.update({name: default for name, _, default, _, _ in _CHOICES})
    values.update({name: default for name, _, default, _, _ in _FLAGS})
    return values


@dataclass(frozen=True)
class TailBatchingConfig:
    """The validated tail-batching settings of one run. Build it with `from_args` (or `from_flags` in tests)."""

    enable: bool
    launch_ratio: float  # r: prompts launched per step = ceil(r * B)
    aborted_prompts: str  # defer | drop
    max_deferrals: int | None  # defer: aborts after which a prompt is pinned at its next launch; None: no cap

    def __post_init__(self) -> None:
        _check(
            self.aborted_prompts in ABORTED_PROMPTS,
            f"--tail_batching.aborted_prompts={self.aborted_prompts!r} is not one of {', '.join(ABORTED_PROMPTS)}",
        )
        ratio = self.launch_ratio
        _check(
            not isinstance(ratio, bool) and isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio >= 1.0,
            f"--tail_batching.launch_ratio={ratio!r} must be a finite number >= 1 (1 launches exactly the batch and "
            "aborts nothing; RollPacker-style over-provisioning uses a little more, e.g. 1.25)",
        )
        count = self.max_deferrals
        _check(
            count is None or (not isinstance(count, bool) and isinstance(count, int) and count >= 1),
            f"--tail_batching.max_deferrals={count!r} must be an integer >= 1 (or left unset: no cap); a prompt "
            "must be deferrable at least once, and is pinned (trained whatever its finish order) after this many "
            "aborts",
        )
        _check(
            not (self.aborted_prompts == "drop" and count is not None),
            f"--tail_batching.max_deferrals={count} has no effect with --tail_batching.aborted_prompts drop (dropped "
            "prompts are never deferred); drop --tail_batching.max_deferrals or use --tail_batching.aborted_prompts "
            "defer",
        )

    @classmethod
    def from_flags(cls, flags: dict) -> "TailBatchingConfig":
        """Build from a plain dict of tail-batching flag values (missing keys take their defaults)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(flags) - known)
        _check(not unknown, f"unknown tail-batching flag(s) {unknown}; valid: {sorted(known)}")
        values = _defaults()
        values.update(flags)
        return cls(**values)

    @classmethod
    def from_args(cls, args) -> "TailBatchingConfig":
        """Build from a hierarchized OpenRLHF namespace (`args.tail_batching`, `args.darts`, `args.rollout`, ...).

        Raises `ValueError` for a bad value, a tail-batching flag given without `--tail_batching.enable`, or a
        combination tail batching cannot run with, naming the flag and the fix.
        """
        flags = vars(args.tail_batching)
        config = cls.from_flags(flags)
        if not config.enable:
            for name, default in _defaults().items():
                if flags.get(name, default) != default:
                    raise ValueError(
                        f"--tail_batching.{name}={flags[name]!r} has no effect without --tail_batching.enable; add "
                        f"--tail_batching.enable or drop --tail_batching.{name}"
                    )
            return config
        _check(
            not args.darts.enable,
            "--tail_batching.enable with --darts.enable is not supported: DARTS plans each group's candidates (and its "
            "cost-model budget) as if every group ran to its end and learns per-prompt length statistics from every "
            "group, while tail batching ends the step at the B-th completed group and aborts the rest, so the planner "
            "would only ever see the groups that won the race. Run them as separate arms against the same baseline "
            "(examples/scripts/*_darts.sh and *_tail_batching.sh): drop --darts.enable or --tail_batching.enable",
        )
        train = args.train
        _check(
            not train.async_enable,
            "--tail_batching.enable with --train.async_enable: tail batching trains the first B groups of a "
            "synchronous, on-policy step; drop --train.async_enable",
        )
        _check(
            not train.partial_rollout_enable,
            "--tail_batching.enable with --train.partial_rollout_enable: tail batching aborts the late groups and "
            "regenerates their prompts (or drops them) instead of resuming partial rollouts; drop one of them",
        )
        rollout = args.rollout
        generate = rollout.vllm_generate_batch_size
        _check(
            generate is None or generate == rollout.batch_size,
            f"--rollout.vllm_generate_batch_size={generate} with --tail_batching.enable: tail batching sizes each "
            "step's launch itself (ceil(--tail_batching.launch_ratio * --rollout.batch_size) prompts); leave "
            "--rollout.vllm_generate_batch_size unset",
        )
        return config

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
