"""Dual-end selection, the offline rule (DARTS_SPEC.md §3(b)): given every candidate's length and truncation flag, keep
exactly M, the K shortest and the L longest.

Truncated candidates (stopped by the length cap) follow one of ``TRUNCATED_RULES`` (``--darts.truncated``; see
``core.selection``). Depends on ``_checks`` only, so ``core.types`` (which checks a kept set against it) and
``core.selection`` (the online form) both import it without importing each other back.
"""

from collections.abc import Sequence

from openrlhf_darts.core._checks import check_bool, check_choice, check_flags, check_int, check_lengths, check_sequence

# How selection treats candidates the length cap stopped (--darts.truncated):
# "exclude" ranks untruncated candidates only and uses truncated ones to fill; "long_end" ranks truncated ones longest.
TRUNCATED_RULES = ("exclude", "long_end")


def select_dual_end(
    lengths: Sequence[int],
    truncated: Sequence[bool],
    num_keep: int,
    num_long: int,
    truncated_rule: str = "exclude",
) -> list[int]:
    """Keep the K = num_keep - num_long shortest and the L = num_long longest candidates (§3(b)).

    ``exclude``: candidates are the untruncated ones, ordered by (length, index); with fewer than num_keep of them,
    all are kept and the group is filled with the truncated candidates of lowest index. ``long_end``: every
    candidate is ranked, by (truncated, length, index), so truncated ones are the longest. Returns num_keep distinct
    indices, ascending.
    """
    lengths = check_lengths("lengths", lengths)
    truncated = check_flags("truncated", truncated, len(lengths), "lengths")
    check_int("num_keep", num_keep, minimum=1)
    check_int("num_long", num_long)
    check_choice("truncated_rule", truncated_rule, TRUNCATED_RULES)
    if not 0 <= num_long < num_keep:
        raise ValueError(
            f"num_long={num_long} is outside [0, num_keep) = [0, {num_keep}); "
            "at least one candidate must come from the short end"
        )
    if len(lengths) < num_keep:
        raise ValueError(
            f"num_keep={num_keep} exceeds the {len(lengths)} candidates given; "
            "a group needs at least num_keep candidates"
        )
    return _select(lengths, truncated, num_keep, num_long, truncated_rule)


def _select(
    lengths: Sequence[int], truncated: Sequence[bool], num_keep: int, num_long: int, truncated_rule: str = "exclude"
) -> list[int]:
    # Unchecked body of select_dual_end, shared with the budget simulation where the inputs are known good.
    if truncated_rule == "long_end":
        ranked = sorted(range(len(lengths)), key=lambda j: (truncated[j], lengths[j], j))
        return sorted(ranked[: num_keep - num_long] + ranked[len(ranked) - num_long :])
    valid = sorted((length, j) for j, (length, cut) in enumerate(zip(lengths, truncated)) if not cut)
    if len(valid) >= num_keep:
        # num_short + num_long = num_keep <= len(valid), so the two slices are disjoint.
        chosen = [j for _, j in valid[: num_keep - num_long]] + [j for _, j in valid[len(valid) - num_long :]]
    else:
        fill = [j for j, cut in enumerate(truncated) if cut][: num_keep - len(valid)]
        chosen = [j for _, j in valid] + fill
    return sorted(chosen)


def is_underfilled(truncated: Sequence[bool], num_keep: int) -> bool:
    """True when fewer than num_keep candidates are untruncated, so the fill branch of §3(b) runs."""
    check_int("num_keep", num_keep, minimum=1)
    check_sequence("truncated", truncated)
    for j, cut in enumerate(truncated):
        check_bool(f"truncated[{j}]", cut)
    return sum(1 for cut in truncated if not cut) < num_keep
