"""Censoring-aware fit of one group's response lengths (DARTS_SPEC.md §3(d) 2, §3(e)).

An aborted candidate reports its partial length and a truncated one the cap; both are right-censored: the true length
is larger. ``fit_lengths`` fits a log-normal to the group with censored lengths treated as lower bounds (a Tobit model
on y = log(1 + length), so zero lengths are fine), by maximum likelihood:

    log L(mu, s) = sum_finished [log phi((y_j - mu) / s) - log s] + sum_censored log Q((y_j - mu) / s)

with phi the standard normal density and Q = 1 - Phi its upper tail. In Olsen's coordinates (a, b) = (mu / s, 1 / s)
the log-likelihood is concave, so Newton's method with a backtracking line search finds the unique maximum. It exists
when the finished lengths take two values, or one value with a censored length above it; otherwise the likelihood
grows without bound as s -> 0 (or mu -> inf) and the fit is that limit, a point mass (see ``fit_lengths``).

The fitted s is the maximum-likelihood scale times the Bessel factor sqrt(k / (k - 1)), k finished lengths, the
small-sample correction of the sample variance, so uncensored and censored groups of 8-12 candidates land on the
scale of the sample std (docs/design.md has the simulated ratios). ``LengthFit.mean`` and ``.std`` are the moments of
min(length, cap) under the fit: the lengths the candidates would have shown had none been aborted (dual-end groups run
every candidate to its end or the cap), so one fitted tail never extrapolates beyond what the engine can generate.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist, fmean

from openrlhf_darts.core._checks import check_flags, check_int, check_lengths, check_real, check_sequence
from openrlhf_darts.core.types import GroupOutcome

_SQRT2 = math.sqrt(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_ASYMPTOTIC_Z = 30.0  # above this, Q(z) and phi(z) / Q(z) come from their asymptotic forms (erfc underflows at ~37)
_MAX_NEWTON_STEPS = 100
_MAX_LOG_LENGTH = 700.0  # exp(700) ~ 1e304: an uncapped imputed length never overflows a float
_STANDARD = NormalDist()


@dataclass(frozen=True)
class LengthFit:
    """A group's fitted length distribution: log(1 + length) ~ Normal(mu, sigma^2), lengths clipped at ``cap``."""

    mu: float  # mean of log(1 + length)
    sigma: float  # std of log(1 + length), Bessel-corrected; 0.0 for a point mass at exp(mu) - 1
    cap: int | None  # the generation cap the moments clip at; None = no clipping
    mean: float  # E[min(length, cap)] in tokens: the censoring-aware mean length of the group's candidates
    std: float  # std of min(length, cap) in tokens: the censoring-aware length spread s_i of §3(d) 2
    num_finished: int  # lengths that entered as exact values
    num_censored: int  # lengths that entered as lower bounds

    def tail_quantile(self, above: int, u: float) -> tuple[int, bool]:
        """The u-quantile of the length given that it exceeds ``above``, as (length, truncated).

        Imputes an aborted candidate's length (§3(e) replay): ``above`` is its partial length. A quantile at or past
        the cap is returned as (cap, True), the way the engine would have truncated it. Rounded to whole tokens and
        never below ``above``.
        """
        check_int("above", above, minimum=0)
        u = check_real("u", u)
        if not 0.0 < u < 1.0:
            raise ValueError(f"u={u!r} is outside (0, 1); expected a probability strictly between 0 and 1")
        if self.cap is not None and above > self.cap:
            raise ValueError(f"above={above} exceeds cap={self.cap}; a partial length never passes the cap")
        y_above = math.log1p(above)
        if self.sigma == 0.0:
            y = max(self.mu, y_above)
        else:
            z_above = (y_above - self.mu) / self.sigma
            if z_above > _ASYMPTOTIC_Z:
                # Far tail: Y - y_above given Y > y_above is close to exponential with rate z / sigma.
                y = y_above - self.sigma * math.log1p(-u) / z_above
            else:
                target = _upper_tail(z_above) * (1.0 - u)  # Q(z) of the quantile; >= Q(30) * tiny, no underflow
                y = self.mu - self.sigma * _STANDARD.inv_cdf(target)
        length = max(above, round(math.expm1(min(y, _MAX_LOG_LENGTH))))
        if self.cap is not None and length >= self.cap:
            return self.cap, True
        return length, False


def fit_lengths(lengths: Sequence[int], censored: Sequence[bool] = (), cap: int | None = None) -> LengthFit | None:
    """Fit one group's lengths, censored ones as lower bounds; moments clip at ``cap`` (module docstring).

    ``censored`` is empty (nothing censored) or one bool per length; ``cap`` is the generation cap the group ran under
    (every length <= cap), or None for no clipping. Cases without a maximum-likelihood fit get its limit:

    - no length finished (all censored): the lengths exceed every censoring point, so with a cap every candidate
      would have reached it (a point mass at the cap: mean = cap, std = 0); without a cap there is no fit: None;
    - the finished lengths take one value l0 and no censored length exceeds it: a point mass at l0 (std = 0).

    Returns None for an empty group, too.
    """
    lengths = check_lengths("lengths", lengths)
    check_sequence("censored", censored)
    flags = check_flags("censored", censored, len(lengths), "lengths") if len(censored) > 0 else [False] * len(lengths)
    if cap is not None:
        check_int("cap", cap, minimum=0)
        beyond = [length for length in lengths if length > cap]
        if beyond:
            raise ValueError(
                f"lengths {beyond[:3]} exceed cap={cap}; pass the generation cap the group ran under "
                "(upstream's max_new_tokens), or cap=None"
            )
    finished = [length for length, cut in zip(lengths, flags) if not cut]
    bounds = [length for length, cut in zip(lengths, flags) if cut]
    if not lengths or (not finished and cap is None):
        return None
    if not finished:
        return _point_mass(cap, cap, 0, len(bounds))
    if min(finished) == max(finished) and not any(length > finished[0] for length in bounds):
        return _point_mass(finished[0], cap, len(finished), len(bounds))
    mu, sigma = _maximize([math.log1p(length) for length in finished], [math.log1p(length) for length in bounds])
    if len(finished) >= 2:
        sigma *= math.sqrt(len(finished) / (len(finished) - 1))
    mean, std = _clipped_moments(mu, sigma, cap)
    return LengthFit(mu, sigma, cap, mean, std, len(finished), len(bounds))


def fit_outcome(outcome: GroupOutcome, max_tokens: int | None = None) -> LengthFit | None:
    """``fit_lengths`` over every candidate of a group, aborted and truncated ones censored, clipped at the group's
    cap (``outcome_cap``) (§3(d) 2)."""
    cap = outcome_cap(outcome, max_tokens)  # checks the outcome
    return fit_lengths(outcome.lengths, outcome.censored, cap)


def outcome_cap(outcome: GroupOutcome, max_tokens: int | None = None) -> int | None:
    """The generation cap of one group: the ``max_tokens`` the engine recorded in the outcome (the value its requests
    reached the engine with); for a record without it, ``group_cap`` (its truncated candidates' length, else the
    ``max_tokens`` given here, None: unknown, no clipping)."""
    if not isinstance(outcome, GroupOutcome):
        raise TypeError(f"outcome={outcome!r} has type {type(outcome).__name__}; expected a GroupOutcome")
    if outcome.max_tokens is not None:
        return outcome.max_tokens
    return group_cap(outcome.lengths, outcome.truncated, max_tokens)


def group_cap(lengths: Sequence[int], truncated: Sequence[bool], max_tokens: int | None = None) -> int | None:
    """The generation cap of one group: its truncated candidates' length if any, else ``max_tokens`` (may be None)."""
    lengths = check_lengths("lengths", lengths)
    truncated = check_flags("truncated", truncated, len(lengths), "lengths")
    if max_tokens is not None:
        check_int("max_tokens", max_tokens, minimum=0)
    cut = {length for length, flag in zip(lengths, truncated) if flag}
    if len(cut) > 1:
        raise ValueError(
            f"truncated candidates have different lengths {sorted(cut)}; a group's candidates share one cap"
        )
    return cut.pop() if cut else max_tokens


def impute_aborted(
    lengths: Sequence[int], truncated: Sequence[bool], aborted: Sequence[bool], fit: LengthFit | None
) -> list[tuple[int, bool]]:
    """Every candidate as (length, truncated) had it run to its end; aborted ones imputed from ``fit`` (§3(e)).

    Finished candidates keep their length and flag. The k aborted ones, in order of (partial length, index), take the
    (r + 1/2) / k quantiles (r = 0..k-1) of the fitted length given that it exceeds their partial length: stratified,
    so they spread over the fitted tail deterministically instead of sitting at the release length (which would bias
    the replayed lengths low).
    """
    lengths = check_lengths("lengths", lengths)
    truncated = check_flags("truncated", truncated, len(lengths), "lengths")
    aborted = check_flags("aborted", aborted, len(lengths), "lengths")
    completed = [(length, cut) for length, cut in zip(lengths, truncated)]
    order = sorted((length, j) for j, (length, stopped) in enumerate(zip(lengths, aborted)) if stopped)
    if order and fit is None:
        raise ValueError(
            f"{len(order)} aborted candidates but fit=None; a group with aborted candidates has finished ones, "
            "so fit_lengths returns a fit for it"
        )
    for r, (partial, j) in enumerate(order):
        if truncated[j]:
            raise ValueError(f"candidate {j} is both truncated and aborted; a candidate stops for one reason only")
        completed[j] = fit.tail_quantile(partial, (r + 0.5) / len(order))
    return completed


# ---- maximum likelihood ---------------------------------------------------------------------------------------------


def _maximize(finished: list[float], bounds: list[float]) -> tuple[float, float]:
    """(mu, s) maximizing the censored log-likelihood; the caller guarantees that the maximum exists."""
    # Standardize, so the start (mu, s) = (0, 1) is always reasonable and the Hessian well scaled.
    every = finished + bounds
    center = fmean(every)
    scale = math.sqrt(fmean([(y - center) ** 2 for y in every]))  # > 0: the caller saw two distinct values
    exact = [(y - center) / scale for y in finished]
    lower = [(y - center) / scale for y in bounds]
    k = len(exact)
    sum_y, sum_yy = sum(exact), sum(y * y for y in exact)

    def loglik(a: float, b: float) -> float:
        return (
            k * math.log(b)
            - 0.5 * sum((b * y - a) ** 2 for y in exact)
            + sum(_log_upper_tail(b * y - a) for y in lower)
        )

    a, b = 0.0, 1.0
    value = loglik(a, b)
    for _ in range(_MAX_NEWTON_STEPS):
        # Gradient and Hessian in (a, b); lam = phi / Q is the inverse Mills ratio, lam' = lam (lam - z) in (0, 1).
        grad_a = b * sum_y - k * a
        grad_b = k / b - (b * sum_yy - a * sum_y)
        h_aa, h_ab, h_bb = -float(k), sum_y, -k / (b * b) - sum_yy
        for y in lower:
            z = b * y - a
            lam = _inverse_mills(z)
            slope = lam * (lam - z)
            grad_a += lam
            grad_b -= lam * y
            h_aa -= slope
            h_ab += slope * y
            h_bb -= slope * y * y
        det = h_aa * h_bb - h_ab * h_ab
        step_a = -(h_bb * grad_a - h_ab * grad_b) / det
        step_b = -(h_aa * grad_b - h_ab * grad_a) / det
        decrement = grad_a * step_a + grad_b * step_b  # squared Newton decrement, >= 0 for a concave function
        if decrement < 1e-10 and b + step_b > 0.0:
            # Near the maximum Newton converges quadratically: one more full step is exact to ~1e-10, and a line
            # search could no longer see the log-likelihood rise through float rounding.
            a, b = a + step_a, b + step_b
            return center + scale * a / b, scale / b
        t = 1.0
        while b + t * step_b <= 0.0:
            t *= 0.5
        while True:
            candidate = loglik(a + t * step_a, b + t * step_b)
            if candidate >= value + 0.25 * t * decrement or t < 1e-12:
                break
            t *= 0.5
        a, b, value = a + t * step_a, b + t * step_b, candidate
    raise RuntimeError(
        f"censored log-normal fit did not converge in {_MAX_NEWTON_STEPS} Newton steps for finished={finished} "
        f"censored={bounds}; please report these lengths"
    )


def _point_mass(length: int, cap: int | None, num_finished: int, num_censored: int) -> LengthFit:
    return LengthFit(math.log1p(length), 0.0, cap, float(length), 0.0, num_finished, num_censored)


def _clipped_moments(mu: float, s: float, cap: int | None) -> tuple[float, float]:
    """Mean and std of min(L, cap) where 1 + L is log-normal(mu, s); of L itself when cap is None."""
    if cap is not None:
        log_c = math.log1p(cap)  # min(L, cap) = min(X, c) - 1 with X = 1 + L, c = 1 + cap
        k = (log_c - mu) / s
    if cap is None or k - 2.0 * s > 8.5:
        # The cap lies beyond the mass that matters (Q(8.5) ~ 1e-17): the plain log-normal moments, computed so that
        # a small s does not cancel (expm1).
        log_mean = mu + 0.5 * s * s
        ss = s * s
        log_excess = ss + math.log(-math.expm1(-ss))  # log(exp(s^2) - 1) without overflow
        if max(log_mean, log_mean + 0.5 * log_excess) > _MAX_LOG_LENGTH:
            raise ValueError(
                f"the fitted lengths (log-mean {mu:.1f}, log-std {s:.1f}) overflow a float; pass the generation cap "
                "(cap=...) so the moments clip there"
            )
        return math.expm1(log_mean), math.exp(log_mean + 0.5 * log_excess)
    # E[min(X, c)^r] / c^r = exp(r (mu - log c) + r^2 s^2 / 2) Phi(k - r s) + Q(k), in logs so no term overflows.
    tail = _upper_tail(k)
    first = math.exp(mu - log_c + 0.5 * s * s + _log_upper_tail(s - k)) + tail
    second = math.exp(2.0 * (mu - log_c) + 2.0 * s * s + _log_upper_tail(2.0 * s - k)) + tail
    c = cap + 1.0
    return c * first - 1.0, c * math.sqrt(max(second - first * first, 0.0))


# ---- the standard normal's upper tail -------------------------------------------------------------------------------


def _upper_tail(z: float) -> float:
    """Q(z) = P(Z > z)."""
    return 0.5 * math.erfc(z / _SQRT2)


def _log_upper_tail(z: float) -> float:
    """log Q(z), finite for every z (asymptotic series where erfc underflows)."""
    if z < _ASYMPTOTIC_Z:
        return math.log(_upper_tail(z))
    zz = z * z
    return -0.5 * zz - math.log(z) - _LOG_SQRT_2PI + math.log1p(-1.0 / zz + 3.0 / (zz * zz))


def _inverse_mills(z: float) -> float:
    """phi(z) / Q(z), the hazard of the standard normal; z + 1/z + ... for large z (continued fraction)."""
    if z < _ASYMPTOTIC_Z:
        return math.exp(-0.5 * z * z - _LOG_SQRT_2PI) / _upper_tail(z)
    # Q / phi = 1 / (z + 1 / (z + 2 / (z + 3 / ...))), evaluated from the bottom; 20 terms are exact here.
    t = z
    for n in range(20, 0, -1):
        t = z + n / t
    return t
