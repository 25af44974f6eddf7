"""`DartsConfig` and the `--darts.*` flag group.

Standard library only: a worker that needs the config must not pay for torch, Ray or vLLM imports. Every flag is
registered with OpenRLHF's dotted style (`--darts.max_candidates`), so after `hierarchize` it lives in `args.darts` and
travels to every Ray actor inside `strategy.args`. `DartsConfig.from_args` validates the whole group against the
upstream flags it interacts with, before any actor starts; no user flag is ever rewritten.

The flags' argparse actions also record which of them the command line gave (`args.darts._given`), so a `--darts.*`
flag without `--darts.enable` is an error naming it, not silently ignored; a value cannot tell, since derived defaults
are None and a user may spell out a default.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields

from openrlhf_darts.core.types import TRUNCATED_RULES

SELECTIONS = ("dual_end", "shortest")
BUDGETS = ("fixed", "cost_model")
TAIL_PRUNE = ("paper", "graded", "off")
WEIGHT_NORMS = ("reference", "plain")
STATS_SOURCES = ("all", "kept")

# (flag, type, default, paper symbol, help). Defaults of None are derived from n = --rollout.n_samples_per_prompt.
_FLAGS: list[tuple[str, type, object, str, str]] = [
    ("num_long", int, None, "L", "candidates kept from the long end; default 1 for dual_end, 0 for shortest"),
    ("min_candidates", int, None, "M_low", "fewest candidates per prompt; default n"),
    ("max_candidates", int, None, "M_up", "most candidates per prompt; default 2n"),
    ("avg_candidates", float, None, "M_total/N", "average candidates per prompt for --darts.budget fixed; default 1.25n"),
    ("cost_weight", float, 1.0, "lambda", "weight of normalized rollout time against effectiveness (cost_model)"),
    ("ema_alpha", float, 0.3, "alpha", "EMA weight of the newest per-prompt length std"),
    ("stream_chunk_tokens", int, 100, "C", "tokens per chunk on the token-level streaming path"),
    ("latency_profile", str, None, "PTL(d, r)", "JSON per-token-latency profile (required by --darts.budget cost_model)"),
    ("budget_window", int, 4, "-", "recent steps of candidate lengths replayed by the cost_model budget"),
    ("warmup_steps", int, 0, "W", "first W training steps: uniform budget, shortest-only selection (reference DAPO)"),
]
# --- token-streaming memory bound (read by the scorer actors; was the variable OPENRLHF_DARTS_MAX_LIVE_CACHES) ---
_FLAGS.append(
    ("max_live_caches", int, 64, "-", "per scorer actor: most samples whose KV cache token streaming holds at once")
)
_CHOICES: list[tuple[str, tuple[str, ...], str, str, str]] = [
    ("selection", SELECTIONS, "dual_end", "K/L", "dual_end keeps K shortest + L longest; shortest keeps n shortest"),
    ("budget", BUDGETS, "fixed", "M_total", "fixed average, or argmax of U = E - lambda*T from the cost model"),
    ("tail_prune", TAIL_PRUNE, "paper", "-", "paper: L=0 when M'_i = M_up; graded: reference-code schedule; off"),
    ("weight_norm", WEIGHT_NORMS, "reference", "Norm", "reference: (v - v_min + 1)/(v_max - v_min); plain: v"),
    ("stats_source", STATS_SOURCES, "all", "-", "lengths entering the per-prompt std: all candidates, or kept only"),
    (
        "truncated",
        TRUNCATED_RULES,
        "exclude",
        "-",
        "exclude: capped candidates only fill groups short of n valid ones; long_end: they rank longest (reference)",
    ),
]
_DERIVED = ("num_long", "min_candidates", "max_candidates", "avg_candidates")  # default None: computed from n
_SWITCHES: list[tuple[str, str]] = [
    ("enable", "turn DARTS on; off means exactly upstream OpenRLHF"),
    ("stream", "score finished groups (actor/ref/critic/RM forwards) while generation continues"),
    ("stream_tokens", "also score long kept candidates chunk by chunk with a KV cache while they decode"),
]


GIVEN_KEY = "_given"  # args.darts._given: the --darts.* flags the command line gave, in order (canonical names)
_GIVEN_DEST = f"darts.{GIVEN_KEY}"


def _record_given(namespace: argparse.Namespace, flag: str) -> None:
    setattr(namespace, _GIVEN_DEST, (*getattr(namespace, _GIVEN_DEST), flag))


class _GivenValue(argparse.Action):
    """`store`, and records the flag as given (argparse calls an action only for flags on the command line)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        _record_given(namespace, self.option_strings[0])


class _GivenSwitch(argparse.Action):
    """`store_true`, and records the flag as given."""

    def __init__(self, option_strings, dest, default=False, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True)
        _record_given(namespace, self.option_strings[0])


def add_darts_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Register the `--darts.*` group on an (upstream) parser; returns the group."""
    group = parser.add_argument_group("DARTS", "Distribution-Aware Active Rollout Trajectory Shaping (arXiv 2605.30859)")
    parser.set_defaults(**{_GIVEN_DEST: ()})
    for name, help_text in _SWITCHES:
        group.add_argument(f"--darts.{name}", action=_GivenSwitch, default=False, help=f"{help_text} (default: off)")
    for name, choices, default, symbol, help_text in _CHOICES:
        group.add_argument(
            f"--darts.{name}",
            action=_GivenValue,
            choices=choices,
            default=default,
            help=f"[{symbol}] {help_text} (default: %(default)s)",
        )
    for name, kind, default, symbol, help_text in _FLAGS:
        shown = _shown_default(name, default)
        group.add_argument(
            f"--darts.{name}",
            action=_GivenValue,
            type=kind,
            default=default,
            help=f"[{symbol}] {help_text} (default: {shown})",
        )
    return group


def flag_table() -> list[tuple[str, str, str, str]]:
    """(flag, default, paper symbol, help) for every DARTS flag, in registration order; docs/flags.md lists the same."""
    rows = [(f"--darts.{n}", "False", "-", h) for n, h in _SWITCHES]
    rows += [(f"--darts.{n}", d, s, h) for n, _, d, s, h in _CHOICES]
    rows += [(f"--darts.{n}", _shown_default(n, d), s, h) for n, _, d, s, h in _FLAGS]
    return rows


def _shown_default(name: str, default: object) -> str:
    """How --help and flag_table show a default: derived ones are computed from n, other Nones mean unset."""
    if name in _DERIVED:
        return "derived"
    return "none" if default is None else str(default)


@dataclass(frozen=True)
class DartsConfig:
    """The validated DARTS settings of one run. Build it with `from_args`; ablations are flag combinations."""

    enable: bool
    n_samples_per_prompt: int  # M (upstream's group size)
    selection: str  # dual_end | shortest
    num_long: int  # L for unpruned prompts
    min_candidates: int  # M_low
    max_candidates: int  # M_up
    budget: str  # fixed | cost_model
    avg_candidates: float  # M_total / N in fixed mode
    cost_weight: float  # lambda
    ema_alpha: float  # alpha
    tail_prune: str
    weight_norm: str
    stats_source: str
    stream: bool
    stream_tokens: bool
    stream_chunk_tokens: int
    latency_profile: str | None
    budget_window: int
    truncated: str = "exclude"  # TRUNCATED_RULES: how selection treats candidates the length cap stopped
    warmup_steps: int = 0  # W: first W training steps use a uniform budget and shortest-only selection
    # --- token-streaming memory bound ---
    max_live_caches: int = 64  # per scorer actor; read by every CPU / chunked model actor, so checked even with DARTS off

    def __post_init__(self) -> None:
        n = self.n_samples_per_prompt
        _check(isinstance(n, int) and n >= 1, f"--rollout.n_samples_per_prompt={n!r} must be an integer >= 1")
        for name, choices in [
            ("selection", SELECTIONS),
            ("budget", BUDGETS),
            ("tail_prune", TAIL_PRUNE),
            ("weight_norm", WEIGHT_NORMS),
            ("stats_source", STATS_SOURCES),
            ("truncated", TRUNCATED_RULES),
        ]:
            value = getattr(self, name)
            _check(value in choices, f"--darts.{name}={value!r} is not one of {', '.join(choices)}")
        # --- token-streaming memory bound ---
        _check(
            isinstance(self.max_live_caches, int) and self.max_live_caches >= 1,
            f"--darts.max_live_caches={self.max_live_caches!r} must be an integer >= 1 (KV caches one scorer actor "
            "holds at once; the default 64 fits every candidate of a few groups)",
        )
        if not self.enable:
            return
        _check(
            n >= 2,
            f"--rollout.n_samples_per_prompt={n} leaves nothing to select; DARTS needs a group of at least 2 "
            "(group-relative advantages need n > 1 anyway)",
        )
        _check(
            0 <= self.num_long < n,
            f"--darts.num_long={self.num_long} must satisfy 0 <= num_long < n={n} (K = n - L needs at least one "
            "short member; the paper uses L=1 of n=8)",
        )
        _check(
            not (self.selection == "shortest" and self.num_long != 0),
            f"--darts.num_long={self.num_long} contradicts --darts.selection shortest, which keeps no long end; "
            "drop --darts.num_long or use --darts.selection dual_end",
        )
        _check(
            self.min_candidates >= n,
            f"--darts.min_candidates={self.min_candidates} is below n={n}; every prompt needs at least n candidates "
            "(the paper uses min_candidates = n)",
        )
        _check(
            self.max_candidates >= n,
            f"--darts.max_candidates={self.max_candidates} is below n={n}; every prompt needs at least n candidates, "
            "so set max_candidates >= n (the paper uses max_candidates = 2n)",
        )
        _check(
            self.max_candidates >= self.min_candidates,
            f"--darts.min_candidates={self.min_candidates} exceeds --darts.max_candidates={self.max_candidates}; "
            "set min_candidates <= max_candidates (the paper uses n and 2n)",
        )
        _check(
            self.min_candidates <= self.avg_candidates <= self.max_candidates,
            f"--darts.avg_candidates={self.avg_candidates} lies outside [min_candidates={self.min_candidates}, "
            f"max_candidates={self.max_candidates}]; pick an average inside the bounds (default 1.25n)",
        )
        _check(self.cost_weight >= 0, f"--darts.cost_weight={self.cost_weight} must be >= 0 (0 ignores rollout time)")
        _check(0 < self.ema_alpha <= 1, f"--darts.ema_alpha={self.ema_alpha} must lie in (0, 1] (the paper uses 0.3)")
        _check(
            self.stream_chunk_tokens >= 1,
            f"--darts.stream_chunk_tokens={self.stream_chunk_tokens} must be >= 1 (the reference code uses 100)",
        )
        _check(self.budget_window >= 1, f"--darts.budget_window={self.budget_window} must be >= 1")
        _check(
            isinstance(self.warmup_steps, int) and self.warmup_steps >= 0,
            f"--darts.warmup_steps={self.warmup_steps!r} must be an integer >= 0 (the reference DAPO trainer uses 10)",
        )
        _check(
            not (self.stream_tokens and not self.stream),
            "--darts.stream_tokens needs --darts.stream: token chunks are scored by the streaming experience maker",
        )
        if self.budget == "cost_model":
            _check(
                self.latency_profile is not None,
                "--darts.budget cost_model needs --darts.latency_profile PATH (a per-token-latency JSON written by "
                "python -m openrlhf_darts.bench.profile_latency), or use --darts.budget fixed",
            )
            _check(
                os.path.isfile(self.latency_profile),
                f"--darts.latency_profile={self.latency_profile!r} is not a file; write one with "
                "python -m openrlhf_darts.bench.profile_latency",
            )

    @property
    def allocation_active(self) -> bool:
        return self.enable and self.min_candidates < self.max_candidates

    @classmethod
    def from_args(cls, args) -> "DartsConfig":
        """Build from a hierarchized OpenRLHF namespace (`args.darts`, `args.rollout`, `args.train`).

        Raises `ValueError` for a bad value or a combination DARTS cannot run with, naming the flag and the fix.
        """
        flags = dict(vars(args.darts))
        # Only a namespace built by add_darts_arguments' parser records what the command line gave.
        given = [flag for flag in flags.pop(GIVEN_KEY, ()) if flag != "--darts.enable"]
        n = args.rollout.n_samples_per_prompt
        config = cls.from_flags(flags, n)
        _check(
            config.enable or not given,
            f"{', '.join(dict.fromkeys(given))} given without --darts.enable; DARTS flags act only when DARTS is on, "
            "so add --darts.enable or drop them (a baseline run takes no --darts.* flag)",
        )
        if config.enable:
            train = args.train
            _check(
                not train.async_enable,
                "--darts.enable with --train.async_enable: DARTS selects within a synchronous, on-policy group; "
                "async training mixes policy versions. Drop --train.async_enable",
            )
            _check(
                not train.partial_rollout_enable,
                "--darts.enable with --train.partial_rollout_enable: resumed partial rollouts would mix policy "
                "versions inside a group. Drop --train.partial_rollout_enable",
            )
            _check(
                not (config.stream and train.colocate_all),
                "--darts.stream with --train.colocate_all: colocated models share GPUs with vLLM, so forwards are "
                "serialized with generation and nothing can overlap. Drop --darts.stream or --train.colocate_all",
            )
            _check(
                not (config.stream and train.dynamic_batch_enable),
                "--darts.stream with --train.dynamic_batch_enable: token-balanced micro-batches need the whole batch "
                "before any forward, so nothing could overlap. Drop one of them",
            )
            _check(
                not (config.stream_tokens and (args.ds.packing_samples or args.ds.ring_attn_size > 1)),
                "--darts.stream_tokens with --ds.packing_samples or --ds.ring_attn_size > 1: chunks are scored with a "
                "per-sample KV cache, which packed samples and ring attention do not support. Drop "
                "--ds.packing_samples / --ds.ring_attn_size or --darts.stream_tokens",
            )
            _check(
                not (config.stream_tokens and args.ds.zero_stage == 3),
                "--darts.stream_tokens with --ds.zero_stage 3: chunk forwards run on one actor of a model group, and "
                "under ZeRO-3 every forward gathers the sharded parameters with collectives that the other "
                "data-parallel ranks do not join, so the job can hang. Rejected with one rank too: there ZeRO-3 "
                "has nothing to shard and the chunk path is untested under it. Use --ds.zero_stage 2 (any number of "
                "ranks) or drop --darts.stream_tokens",
            )
            _check(
                not (config.stream and args.vllm.enable_sleep),
                "--darts.stream with --vllm.enable_sleep: engines sleep while the models score, so nothing "
                "overlaps. Drop one of them",
            )
        return config

    @classmethod
    def from_flags(cls, flags: dict, n_samples_per_prompt: int) -> "DartsConfig":
        """Build from a plain dict of darts flag values (missing keys take their defaults)."""
        known = {f.name for f in fields(cls)} - {"n_samples_per_prompt"}
        unknown = sorted(set(flags) - known)
        _check(not unknown, f"unknown DARTS flag(s) {unknown}; valid: {sorted(known)}")
        values = {name: default for name, _, default, _, _ in _FLAGS}
        values.update({name: default for name, _, default, _, _ in _CHOICES})
        values.update({name: False for name, _ in _SWITCHES})
        values.update(flags)
        n = n_samples_per_prompt
        if values["num_long"] is None:
            values["num_long"] = 0 if values["selection"] == "shortest" else 1
        if values["min_candidates"] is None:
            values["min_candidates"] = n
        if values["max_candidates"] is None:
            values["max_candidates"] = 2 * n
        if values["avg_candidates"] is None:
            values["avg_candidates"] = min(max(1.25 * n, values["min_candidates"]), values["max_candidates"])
        return cls(n_samples_per_prompt=n, **values)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def default_flags() -> dict[str, object]:
    """Every `--darts.*` flag's value when none is given (what `args.darts` holds after parsing an upstream command
    without DARTS flags); derived defaults stay None, as argparse leaves them."""
    values = {name: False for name, _ in _SWITCHES}
    values.update({name: default for name, _, default, _, _ in _CHOICES})
    values.update({name: default for name, _, default, _, _ in _FLAGS})
    return values


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
