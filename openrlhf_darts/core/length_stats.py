"""Per-prompt smoothed spread of response lengths (DARTS_SPEC.md §3(d) 1-2).

For each prompt (keyed by its text) keep v_i, an exponential moving average of s_i, the std of its candidates' lengths.
Censored lengths (aborted partials, truncated caps) are lower bounds on the true lengths, so s_i is the std of a
censoring-aware fit of the group (``core.length_fit.fit_lengths``: a right-censored log-normal), used for every group,
censored or not, so that shortest-only and dual-end prompts share one scale and a falling spread is seen. The table is
saved and restored with checkpoints; its state carries ``STATE_VERSION``.
"""

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from openrlhf_darts.core._checks import check_int, check_real
from openrlhf_darts.core.length_fit import fit_lengths

# Version 1 (no "version" key) held EMAs of the raw sample std under the "censored groups never lower v_i" rule, biased
# low for pruned prompts; version 2 holds EMAs of the censored log-normal fit's std. The two scales never mix.
STATE_VERSION = 2
_STATE_KEYS = ("version", "alpha", "values", "counts")


class LengthStats:
    """EMA table v_i <- alpha * s_i + (1 - alpha) * v_i of per-prompt length std (§3(d) 1, ``--darts.ema_alpha``)."""

    def __init__(self, alpha: float = 0.3) -> None:
        check_real("alpha", alpha)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(
                f"alpha={alpha!r} is outside (0, 1]; alpha is the weight on the new std (the paper uses 0.3)"
            )
        self.alpha = float(alpha)
        self._values: dict[str, float] = {}  # prompt key -> v_i, in tokens
        self._counts: dict[str, int] = {}  # prompt key -> observations that entered v_i

    def update(self, key: str, lengths: Sequence[int], censored: Sequence[bool] = (), cap: int | None = None) -> bool:
        """Fold one group's lengths into v_key; returns whether v_key changed.

        ``censored`` is empty (nothing censored) or one bool per length; ``cap`` is the generation cap of the group
        (see ``fit_lengths``). s is ``fit_lengths(lengths, censored, cap).std``, so a censored group lowers v_key as
        readily as it raises it (§3(d) 2). A group of fewer than two lengths has no spread and is skipped, and so is a
        group whose every length is censored when no cap is given (nothing bounds it from above).
        """
        if not isinstance(key, str):
            raise TypeError(f"key={key!r} has type {type(key).__name__}; expected the prompt text as a str")
        fit = fit_lengths(lengths, censored, cap)  # checks the arguments
        if len(lengths) < 2 or fit is None:
            return False
        old = self._values.get(key)
        if old is None:
            self._values[key] = fit.std
            self._counts[key] = 1
            return True
        new = self.alpha * fit.std + (1.0 - self.alpha) * old
        self._values[key] = new
        self._counts[key] += 1
        return new != old

    def std(self, key: str) -> float | None:
        """v_key, or None for a prompt never observed."""
        return self._values.get(key)

    def mean_std(self) -> float:
        """Mean v over known prompts (``darts/length_std_mean``); 0.0 when none is known."""
        return statistics.fmean(self._values.values()) if self._values else 0.0

    def weights(self, keys: Iterable[str]) -> list[float]:
        """v per key, in order; an unseen key gets the mean of the known v's, or 0.0 if none is known (§3(d) 1)."""
        default = self.mean_std()
        return [self._values.get(key, default) for key in keys]

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state; ``load_state_dict`` restores it exactly (JSON keeps Python floats exactly)."""
        return {
            "version": STATE_VERSION,
            "alpha": self.alpha,
            "values": dict(self._values),
            "counts": dict(self._counts),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the table with ``state``; the saved alpha must equal this one, since a flag is never rewritten."""
        values, counts = _check_state(state)
        if state["alpha"] != self.alpha:
            raise ValueError(
                f"state alpha={state['alpha']!r} differs from this LengthStats alpha={self.alpha!r}; resume with "
                f"--darts.ema_alpha={state['alpha']!r}, or build the table with LengthStats.from_state_dict(state)"
            )
        self._values, self._counts = values, counts

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "LengthStats":
        """A new table with the saved alpha and entries."""
        values, counts = _check_state(state)
        stats = cls(state["alpha"])
        stats._values, stats._counts = values, counts
        return stats


def _check_state(state: Any) -> tuple[dict[str, float], dict[str, int]]:
    if not isinstance(state, Mapping):
        raise TypeError(f"state has type {type(state).__name__}; expected a dict from LengthStats.state_dict()")
    if state.get("version") != STATE_VERSION:
        written = "before versions were recorded (version 1)" if "version" not in state else f"as {state['version']!r}"
        raise ValueError(
            f"LengthStats state was written {written}, but this build reads version {STATE_VERSION}: version 1 "
            "smoothed the raw std of censored groups, biased low for pruned prompts, and its v_i cannot be mixed with "
            "the censored log-normal fit of version 2 (docs/design.md). Resume from a checkpoint written by this "
            "version, or drop the 'darts_planner' entry from the checkpoint's client_states to start the length "
            "statistics afresh"
        )
    missing = [key for key in _STATE_KEYS if key not in state]
    extra = [key for key in state if key not in _STATE_KEYS]
    if missing or extra:
        raise ValueError(f"state has missing keys {missing} and unknown keys {extra}; expected {list(_STATE_KEYS)}")
    check_real("state alpha", state["alpha"])
    raw_values, raw_counts = state["values"], state["counts"]
    for name, table in (("values", raw_values), ("counts", raw_counts)):
        if not isinstance(table, Mapping):
            raise TypeError(f"state {name} has type {type(table).__name__}; expected a dict keyed by prompt text")
    if set(raw_values) != set(raw_counts):
        differ = sorted(set(raw_values) ^ set(raw_counts), key=repr)[:3]
        raise ValueError(f"state values and counts have different keys (e.g. {differ}); expected the same prompt keys")
    values: dict[str, float] = {}
    counts: dict[str, int] = {}
    for key, value in raw_values.items():
        if not isinstance(key, str):
            raise TypeError(f"state key {key!r} has type {type(key).__name__}; expected the prompt text as a str")
        values[key] = check_real(f"state values[{key!r}]", value, minimum=0.0)
        counts[key] = check_int(f"state counts[{key!r}]", raw_counts[key], minimum=1)
    return values, counts
