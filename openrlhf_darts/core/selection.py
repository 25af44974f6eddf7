"""Dual-end selection and its online form (DARTS_SPEC.md §3(b) and §3(c)).

``select_dual_end`` is the offline rule: given every candidate's length and truncation flag, keep exactly M. The
``GroupSelector`` sees the same candidates one finish at a time and tells the engine actor when a shortest-only group
may stop early; fed every finish, it keeps exactly what ``select_dual_end`` keeps. The offline rule lives in
``core.dual_end`` (``core.types`` checks kept sets against it) and is re-exported here.

Truncated candidates (stopped by the length cap) follow one of two rules (``--darts.truncated``):

- ``exclude`` (ours, the default): they are not ranked; they only fill a group with fewer than M untruncated ones.
- ``long_end`` (the reference code's behaviour): they rank as the longest candidates, by (truncated, length, index),
  so a truncated candidate usually becomes a dual-end group's long sample.
"""

from collections.abc import Iterable

from openrlhf_darts.core._checks import check_bool, check_choice, check_int
from openrlhf_darts.core.dual_end import TRUNCATED_RULES, _select, is_underfilled, select_dual_end  # noqa: F401
from openrlhf_darts.core.types import GroupPlan


class GroupSelector:
    """Online dual-end selection for one group, fed finish events in completion order (§3(c)).

    It sees finishes only. ``can_abort`` turns true as soon as a shortest-only group may release: under ``exclude``
    once num_keep valid candidates finished (``release_key`` is then the (length, index) of the num_keep-th shortest,
    and the engine actor aborts each running candidate whose progress orders after it, ``core.early_stop``); under
    ``long_end`` once num_keep candidates stopped for any reason, as the reference code does.
    """

    def __init__(self, plan: GroupPlan, truncated_rule: str = "exclude") -> None:
        if not isinstance(plan, GroupPlan):
            raise TypeError(f"plan={plan!r} has type {type(plan).__name__}; expected a GroupPlan")
        self.plan = plan
        self.truncated_rule = check_choice("truncated_rule", truncated_rule, TRUNCATED_RULES)
        self._lengths: dict[int, int] = {}  # candidate index -> generated tokens, in completion order
        self._truncated: dict[int, bool] = {}
        self._valid: list[tuple[int, int]] = []  # (length, index) of untruncated finishes, kept sorted

    def on_finish(self, index: int, length: int, truncated: bool) -> None:
        """Record that candidate ``index`` stopped by itself (EOS or the length cap) after ``length`` tokens."""
        check_int("index", index, minimum=0)
        if index >= self.plan.num_candidates:
            raise ValueError(
                f"index={index} is out of range; expected a candidate index in [0, {self.plan.num_candidates})"
            )
        if index in self._lengths:
            raise ValueError(f"candidate index={index} finished twice; each candidate finishes at most once")
        check_int("length", length, minimum=0)
        check_bool("truncated", truncated)
        self._lengths[index] = length
        self._truncated[index] = truncated
        if not truncated:
            # Groups are small (M'_i <= 2M), so an insertion sort step is cheaper than a heap.
            self._valid.append((length, index))
            self._valid.sort()

    @property
    def num_finished(self) -> int:
        return len(self._lengths)

    @property
    def finished_indices(self) -> tuple[int, ...]:
        """Indices of the finished candidates, ascending."""
        return tuple(sorted(self._lengths))

    @property
    def done(self) -> bool:
        """Every candidate has finished."""
        return len(self._lengths) == self.plan.num_candidates

    def can_abort(self) -> bool:
        """A shortest-only group may abort its surplus: num_keep valid finishes (``exclude``) or num_keep finishes of
        any kind (``long_end``)."""
        if not self.plan.shortest_only:
            return False
        if self.truncated_rule == "long_end":
            return len(self._lengths) >= self.plan.num_keep
        return len(self._valid) >= self.plan.num_keep

    def release_key(self) -> tuple[int, int] | None:
        """(length, index) of the num_keep-th shortest valid finish, or None while fewer than num_keep valid finished.

        A running candidate j whose progress g_j gives (g_j, j) > release_key() can never enter the num_keep
        shortest: it ends at least g_j long, and ties order by index.
        """
        if len(self._valid) < self.plan.num_keep:
            return None
        return self._valid[self.plan.num_keep - 1]

    def release_length(self) -> int | None:
        """Length of the num_keep-th shortest valid finish, or None while fewer than num_keep valid ones finished."""
        key = self.release_key()
        return None if key is None else key[0]

    def longest_key(self) -> tuple[int, int, int] | None:
        """(truncated, length, index) of the finish that ranks longest under the truncation rule, or None.

        ``exclude`` ranks untruncated finishes only (the first element is then 0); ``long_end`` ranks every finish,
        truncated ones last. Token streaming compares a running candidate's (0, progress, index) with it (§3(g)).
        """
        if self.truncated_rule == "long_end":
            ranked = [(int(self._truncated[j]), length, j) for j, length in self._lengths.items()]
            return max(ranked, default=None)
        return (0, *self._valid[-1]) if self._valid else None

    def ranked_finishes(self) -> list[tuple[int, int, int]]:
        """(truncated, length, index) of every finish that competes for the long end, ascending (see longest_key)."""
        if self.truncated_rule == "long_end":
            return sorted((int(self._truncated[j]), length, j) for j, length in self._lengths.items())
        return [(0, length, j) for length, j in self._valid]

    def short_end_final(self, pending: Iterable[tuple[int, int]]) -> list[int] | None:
        """The K = num_short shortest valid finishes, once no candidate still pending can displace them; else None.

        The release rule of §3(c) with K in place of M (§3(b), §3(g)). ``pending`` holds (progress, index) of every
        candidate neither finished nor aborted: decoding, or waiting in the engine's queue with 0 tokens. Let b be the
        (length, index) of the K-th shortest valid finish. A pending candidate r with progress g ends at least g long,
        so it can order before b, and push a finished member out, only while (g, r) < b; ties order by index, as in
        the abort rule (``core.early_stop``). Once every pending (g, r) orders after b, the K are kept whatever the
        rest does: the fill branch of ``select_dual_end`` keeps every valid candidate too.

        Both truncation rules give the same answer. A candidate that ends truncated is unranked under ``exclude`` and
        ranks after every valid one under ``long_end``, so it never enters the short end while K valid finishes exist;
        only a valid ending can displace b, and that ending is at least g long. Under ``long_end`` with fewer than K
        valid finishes the short end would hold a truncated candidate, which a pending sibling can still displace by
        ending valid at any length: nothing is final before the group ends (None).
        """
        num_short = self.plan.num_short
        keys = []
        for key in pending:
            progress, index = key
            check_int("progress", progress, minimum=0)
            check_int("index", index, minimum=0)
            if index in self._lengths:
                raise ValueError(f"candidate index={index} is pending but already finished; pass unstopped ones only")
            keys.append((progress, index))
        if len(self._valid) < num_short:
            return None
        bound = self._valid[num_short - 1]
        if any(key < bound for key in keys):
            return None
        return sorted(j for _, j in self._valid[:num_short])

    def kept(self) -> list[int]:
        """``select_dual_end`` over the finished candidates under the group's rule, as candidate indices, ascending."""
        if len(self._lengths) < self.plan.num_keep:
            raise ValueError(
                f"only {len(self._lengths)} candidates finished but num_keep={self.plan.num_keep}; "
                "kept() needs at least num_keep finished candidates"
            )
        finished = sorted(self._lengths)  # ascending, so index tie-breaks carry over to candidate indices
        positions = _select(
            [self._lengths[j] for j in finished],
            [self._truncated[j] for j in finished],
            self.plan.num_keep,
            self.plan.num_long,
            self.truncated_rule,
        )
        return [finished[p] for p in positions]
