"""Small frozen records that cross module and process boundaries (DARTS_SPEC.md §3(a)-(c); STYLE.md house rule 10).

A ``GroupPlan`` says how one prompt is rolled out, a ``CandidateResult`` reports one candidate, and a ``GroupOutcome``
reports the whole group after selection, with a ``Decision`` per candidate whose drop reasons become the metric keys
``darts/drop_<value>``.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from openrlhf_darts.core._checks import check_bool, check_choice, check_int, check_real, check_sequence
from openrlhf_darts.core.dual_end import TRUNCATED_RULES, _select, select_dual_end


@dataclass(frozen=True)
class GroupPlan:
    """How one prompt is rolled out (§3(a)): M'_i candidates, M kept, L of them from the long end (§3(b))."""

    num_candidates: int  # M'_i: requests launched for this prompt
    num_keep: int  # M: samples handed to the trainer
    num_long: int  # L: kept from the long end; 0 means shortest-only, so early abort is allowed (§3(c))

    def __post_init__(self) -> None:
        check_int("num_keep", self.num_keep, minimum=1)
        check_int("num_candidates", self.num_candidates)
        check_int("num_long", self.num_long)
        if self.num_candidates < self.num_keep:
            raise ValueError(
                f"num_keep={self.num_keep} exceeds num_candidates={self.num_candidates}; "
                "a plan needs num_candidates >= num_keep"
            )
        if not 0 <= self.num_long < self.num_keep:
            raise ValueError(
                f"num_long={self.num_long} is outside [0, num_keep) = [0, {self.num_keep}); "
                "at least one candidate must come from the short end (K = num_keep - num_long >= 1)"
            )

    @property
    def num_short(self) -> int:
        """K = M - L, the candidates kept from the short end."""
        return self.num_keep - self.num_long

    @property
    def shortest_only(self) -> bool:
        """L = 0: the group may stop early once its M shortest valid candidates are known (§3(c))."""
        return self.num_long == 0

    @classmethod
    def uniform(cls, num_keep: int) -> "GroupPlan":
        """M' = M: no redundancy, so selection keeps every candidate and the group passes through untouched (§3(a))."""
        return cls(num_candidates=num_keep, num_keep=num_keep, num_long=0)


class Decision(str, Enum):
    """What happened to one candidate; every value but ``KEEP`` is a drop reason (metric ``darts/drop_<value>``)."""

    KEEP = "keep"
    ABORTED = "aborted"  # stopped by the early-stop rule of §3(c); its length is partial
    TRUNCATED = "truncated"  # hit the length cap and was not needed to fill the group (§3(b))
    NOT_SELECTED = "not_selected"  # finished validly but fell between the short and the long end


@dataclass(frozen=True)
class CandidateResult:
    """One candidate of a group, as the engine saw it stop (§3(b), (c))."""

    index: int  # candidate index j within the group, 0 <= j < M'_i
    length: int  # generated response tokens; the partial length when aborted
    truncated: bool  # the length cap stopped it
    aborted: bool  # the early-stop rule stopped it

    def __post_init__(self) -> None:
        check_int("index", self.index, minimum=0)
        check_int("length", self.length, minimum=0)
        check_bool("truncated", self.truncated)
        check_bool("aborted", self.aborted)
        if self.truncated and self.aborted:
            raise ValueError(
                f"candidate index={self.index} is both truncated and aborted; a candidate stops for one reason only"
            )


_OUTCOME_KEYS = (
    "plan",
    "lengths",
    "truncated",
    "aborted",
    "kept",
    "decisions",
    "underfilled",
    "elapsed_s",
    "release_s",
    "truncated_rule",
    "max_tokens",
)
_PLAN_KEYS = ("num_candidates", "num_keep", "num_long")


@dataclass(frozen=True)
class GroupOutcome:
    """One group after selection (§3(b), (c)): every candidate's length and fate, and the exactly M kept indices.

    ``from_results`` is the usual way to build one. The direct constructor checks that the fields agree with each other
    and with the invariants of §3(b): M distinct kept indices, no aborted candidate kept, and ``underfilled`` set
    exactly when fewer than M untruncated candidates finished. Under ``truncated_rule="exclude"`` untruncated
    candidates are preferred (a truncated one is kept only to fill an underfilled group, which then keeps every
    untruncated one). Under ``"long_end"`` truncated candidates rank longest, and a dual-end group's kept set must be
    the selection over its finished candidates; a shortest-only group keeps the first M candidates to stop, which the
    record cannot re-derive (it holds no stop order). ``max_tokens``, when recorded, bounds every length, and a
    truncated candidate stopped exactly there.
    """

    plan: GroupPlan
    lengths: tuple[int, ...]  # [M'_i] generated tokens per candidate index; partial for aborted candidates
    truncated: tuple[bool, ...]  # [M'_i]
    aborted: tuple[bool, ...]  # [M'_i]
    kept: tuple[int, ...]  # [M] candidate indices, ascending
    decisions: tuple[Decision, ...]  # [M'_i]
    underfilled: bool  # the fill branch of §3(b) ran: fewer than M untruncated candidates finished
    elapsed_s: float = 0.0  # seconds from group start until its last candidate stopped
    release_s: float = 0.0  # seconds from group start until its kept set became final
    truncated_rule: str = "exclude"  # TRUNCATED_RULES: how selection treated truncated candidates
    # The group's generation cap: the max_tokens its requests reached the engine with (upstream's executor sets
    # max_length - prompt tokens when max_new_tokens is None). None: not recorded (records written before it was).
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        check_choice("truncated_rule", self.truncated_rule, TRUNCATED_RULES)
        self._check_per_candidate_fields()
        self._check_max_tokens()
        self._check_kept()
        self._check_selection_invariants()
        for j in range(self.plan.num_candidates):
            expected = _decision(j in self.kept, self.aborted[j], self.truncated[j])
            if self.decisions[j] is not expected:
                raise ValueError(
                    f"decisions[{j}]={self.decisions[j].value!r} but candidate {j} (kept={j in self.kept}, "
                    f"aborted={self.aborted[j]}, truncated={self.truncated[j]}) must be {expected.value!r}"
                )
        # Accept ints from callers and JSON; store floats so equality survives a to_dict/from_dict round trip.
        object.__setattr__(self, "elapsed_s", check_real("elapsed_s", self.elapsed_s, minimum=0.0))
        object.__setattr__(self, "release_s", check_real("release_s", self.release_s, minimum=0.0))
        if self.release_s > self.elapsed_s:
            raise ValueError(
                f"release_s={self.release_s} exceeds elapsed_s={self.elapsed_s}; "
                "a kept set becomes final no later than the group's last candidate stops"
            )

    def _check_per_candidate_fields(self) -> None:
        if not isinstance(self.plan, GroupPlan):
            raise TypeError(f"plan={self.plan!r} has type {type(self.plan).__name__}; expected a GroupPlan")
        num_candidates = self.plan.num_candidates
        for name in ("lengths", "truncated", "aborted", "decisions"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                raise TypeError(f"{name}={value!r} has type {type(value).__name__}; expected a tuple")
            if len(value) != num_candidates:
                raise ValueError(
                    f"{name} has {len(value)} entries but plan.num_candidates={num_candidates}; "
                    "expected one per candidate"
                )
        for j in range(num_candidates):
            check_int(f"lengths[{j}]", self.lengths[j], minimum=0)
            check_bool(f"truncated[{j}]", self.truncated[j])
            check_bool(f"aborted[{j}]", self.aborted[j])
            if not isinstance(self.decisions[j], Decision):
                raise TypeError(f"decisions[{j}]={self.decisions[j]!r} is not a Decision; expected one of {_values()}")
            if self.truncated[j] and self.aborted[j]:
                raise ValueError(f"candidate {j} is both truncated and aborted; a candidate stops for one reason only")

    def _check_max_tokens(self) -> None:
        if self.max_tokens is None:
            return
        check_int("max_tokens", self.max_tokens, minimum=1)
        for j, (length, cut) in enumerate(zip(self.lengths, self.truncated)):
            if length > self.max_tokens:
                raise ValueError(
                    f"lengths[{j}]={length} exceeds max_tokens={self.max_tokens}; no candidate generates past the "
                    "group's cap (record the max_tokens the engine received)"
                )
            if cut and length != self.max_tokens:
                raise ValueError(
                    f"candidate {j} is truncated at length {length} but max_tokens={self.max_tokens}; the length cap "
                    "stops a candidate exactly at max_tokens (was the engine's max_model_len shorter than the prompt "
                    "plus max_tokens?)"
                )

    def _check_kept(self) -> None:
        if not isinstance(self.kept, tuple):
            raise TypeError(f"kept={self.kept!r} has type {type(self.kept).__name__}; expected a tuple")
        if len(self.kept) != self.plan.num_keep:
            raise ValueError(
                f"kept={self.kept} has {len(self.kept)} indices; expected exactly num_keep={self.plan.num_keep}"
            )
        for position, j in enumerate(self.kept):
            check_int(f"kept[{position}]", j, minimum=0)
            if j >= self.plan.num_candidates:
                raise ValueError(
                    f"kept[{position}]={j} is out of range; expected a candidate index in "
                    f"[0, {self.plan.num_candidates})"
                )
            if self.aborted[j]:
                raise ValueError(f"kept[{position}]={j} is an aborted candidate; only finished candidates can be kept")
        if any(a >= b for a, b in zip(self.kept, self.kept[1:])):
            raise ValueError(
                f"kept={self.kept} is not strictly ascending; expected distinct indices in ascending order"
            )

    def _check_selection_invariants(self) -> None:
        # §3(b) whatever K and L are: underfilled records whether fewer than M untruncated candidates finished.
        check_bool("underfilled", self.underfilled)
        valid = [j for j in range(self.plan.num_candidates) if not self.truncated[j] and not self.aborted[j]]
        num_keep = self.plan.num_keep
        if self.underfilled != (len(valid) < num_keep):
            raise ValueError(
                f"underfilled={self.underfilled} but {len(valid)} untruncated candidates finished for "
                f"num_keep={num_keep}; underfilled must equal ({len(valid)} < {num_keep})"
            )
        if self.truncated_rule == "long_end":
            self._check_long_end()
            return
        if not self.underfilled and any(self.truncated[j] for j in self.kept):
            raise ValueError(
                f"kept={self.kept} includes a truncated candidate although {len(valid)} untruncated candidates "
                f"finished; truncated candidates may only fill a group with fewer than num_keep={num_keep} valid ones "
                "(or use truncated_rule='long_end')"
            )
        left_out = [j for j in valid if j not in self.kept]
        if self.underfilled and left_out:
            raise ValueError(
                f"kept={self.kept} leaves out untruncated candidates {left_out} of an underfilled group; "
                "the fill branch of §3(b) keeps every untruncated finished candidate"
            )

    def _check_long_end(self) -> None:
        # A dual-end group runs every candidate to the end, so its kept set is the long_end selection over them.
        # A shortest-only group keeps the first M to stop, which only the engine saw.
        if self.plan.shortest_only:
            return
        finished = [j for j in range(self.plan.num_candidates) if not self.aborted[j]]
        positions = _select(
            [self.lengths[j] for j in finished],
            [self.truncated[j] for j in finished],
            self.plan.num_keep,
            self.plan.num_long,
            "long_end",
        )
        expected = tuple(finished[p] for p in positions)
        if self.kept != expected:
            raise ValueError(
                f"kept={self.kept} but truncated_rule='long_end' keeps {expected}: the K shortest and the L longest "
                "finished candidates by (truncated, length, index)"
            )

    @classmethod
    def from_results(
        cls,
        plan: GroupPlan,
        results: Sequence[CandidateResult],
        elapsed_s: float = 0.0,
        release_s: float = 0.0,
        truncated_rule: str = "exclude",
        kept: Sequence[int] | None = None,
        max_tokens: int | None = None,
    ) -> "GroupOutcome":
        """Select over the finished (non-aborted) candidates with ``select_dual_end`` (§3(b)) and record every fate.

        ``results`` holds one ``CandidateResult`` per candidate index 0..M'-1, in any order. ``kept`` is the kept set
        the engine actor decided, checked against the selection; under ``truncated_rule="long_end"`` a shortest-only
        group keeps the first M candidates to stop, so there it is taken as given (and required when more than M
        finished, since the results hold no stop order). ``max_tokens`` is the group's generation cap as the engine
        received it (None: unknown).
        """
        if not isinstance(plan, GroupPlan):
            raise TypeError(f"plan={plan!r} has type {type(plan).__name__}; expected a GroupPlan")
        check_sequence("results", results)
        by_index: dict[int, CandidateResult] = {}
        for result in results:
            if not isinstance(result, CandidateResult):
                raise TypeError(f"results holds {result!r}; expected CandidateResult records")
            if result.index >= plan.num_candidates:
                raise ValueError(
                    f"result index={result.index} is out of range; expected a candidate index in "
                    f"[0, {plan.num_candidates}) for plan.num_candidates={plan.num_candidates}"
                )
            if result.index in by_index:
                raise ValueError(f"candidate index={result.index} is reported twice; expected each index exactly once")
            by_index[result.index] = result
        missing = [j for j in range(plan.num_candidates) if j not in by_index]
        if missing:
            raise ValueError(
                f"results lack candidate indices {missing}; expected each of 0..{plan.num_candidates - 1} exactly once"
            )
        ordered = [by_index[j] for j in range(plan.num_candidates)]
        finished = [r.index for r in ordered if not r.aborted]  # ascending, so index tie-breaks carry over
        if len(finished) < plan.num_keep:
            raise ValueError(
                f"only {len(finished)} of {plan.num_candidates} candidates finished without abort but "
                f"num_keep={plan.num_keep}; the early-stop rule of §3(c) may abort only once num_keep are valid"
            )
        positions = select_dual_end(
            [ordered[j].length for j in finished],
            [ordered[j].truncated for j in finished],
            plan.num_keep,
            plan.num_long,
            truncated_rule,
        )
        selected = tuple(finished[p] for p in positions)
        by_stop_order = truncated_rule == "long_end" and plan.shortest_only
        if kept is None:
            if by_stop_order and len(finished) > plan.num_keep:
                raise ValueError(
                    f"{len(finished)} candidates finished in a shortest-only group under truncated_rule='long_end', "
                    f"which keeps the first num_keep={plan.num_keep} to stop; pass the engine's kept set as kept="
                )
            kept = selected
        else:
            kept = tuple(sorted(check_sequence("kept", kept)))
            if not by_stop_order and kept != selected:
                raise ValueError(
                    f"kept={kept} differs from the selection over the finished candidates, {selected} "
                    f"(truncated_rule={truncated_rule!r}); the engine's kept set must be select_dual_end's"
                )
        num_valid = sum(1 for j in finished if not ordered[j].truncated)
        decisions = tuple(_decision(r.index in kept, r.aborted, r.truncated) for r in ordered)
        return cls(
            plan=plan,
            lengths=tuple(r.length for r in ordered),
            truncated=tuple(r.truncated for r in ordered),
            aborted=tuple(r.aborted for r in ordered),
            kept=kept,
            decisions=decisions,
            underfilled=num_valid < plan.num_keep,
            elapsed_s=elapsed_s,
            release_s=release_s,
            truncated_rule=truncated_rule,
            max_tokens=max_tokens,
        )

    @property
    def tokens_generated(self) -> int:
        """All tokens decoded for the group, partial lengths of aborted candidates included."""
        return sum(self.lengths)

    @property
    def tokens_kept(self) -> int:
        return sum(self.lengths[j] for j in self.kept)

    @property
    def tokens_wasted(self) -> int:
        """Partial lengths of aborted candidates plus full lengths of dropped finished ones (§3(c))."""
        return self.tokens_generated - self.tokens_kept

    @property
    def num_aborted(self) -> int:
        return sum(self.aborted)

    @property
    def censored(self) -> tuple[bool, ...]:
        """[M'_i] lengths that are lower bounds on the true length: aborted or truncated (§3(d) 2)."""
        return tuple(a or t for a, t in zip(self.aborted, self.truncated))

    @property
    def kept_lengths(self) -> tuple[int, ...]:
        """[M] lengths of the kept candidates, in the order of ``kept``."""
        return tuple(self.lengths[j] for j in self.kept)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (lists, str decisions) for a Ray boundary or a file; ``from_dict`` inverts it exactly."""
        return {
            "plan": {key: getattr(self.plan, key) for key in _PLAN_KEYS},
            "lengths": list(self.lengths),
            "truncated": list(self.truncated),
            "aborted": list(self.aborted),
            "kept": list(self.kept),
            "decisions": [d.value for d in self.decisions],
            "underfilled": self.underfilled,
            "elapsed_s": self.elapsed_s,
            "release_s": self.release_s,
            "truncated_rule": self.truncated_rule,
            "max_tokens": self.max_tokens,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GroupOutcome":
        if not isinstance(data, Mapping):
            raise TypeError(f"data has type {type(data).__name__}; expected a dict from GroupOutcome.to_dict()")
        if "truncated_rule" not in data:
            # Records written before --darts.truncated existed (saved benchmark reports): "exclude" was the only rule.
            data = {**data, "truncated_rule": "exclude"}
        if "max_tokens" not in data:
            # Records written before the engine recorded each group's cap: unknown.
            data = {**data, "max_tokens": None}
        _check_keys("GroupOutcome dict", data, _OUTCOME_KEYS)
        plan = data["plan"]
        if not isinstance(plan, Mapping):
            raise TypeError(
                f"plan={plan!r} has type {type(plan).__name__}; expected a dict with keys {list(_PLAN_KEYS)}"
            )
        _check_keys("plan dict", plan, _PLAN_KEYS)
        decisions = []
        for j, value in enumerate(check_sequence("decisions", data["decisions"])):
            try:
                decisions.append(Decision(value))
            except ValueError:
                raise ValueError(f"decisions[{j}]={value!r} is not one of {_values()}") from None
        return cls(
            plan=GroupPlan(**{key: plan[key] for key in _PLAN_KEYS}),
            lengths=tuple(check_sequence("lengths", data["lengths"])),
            truncated=tuple(check_sequence("truncated", data["truncated"])),
            aborted=tuple(check_sequence("aborted", data["aborted"])),
            kept=tuple(check_sequence("kept", data["kept"])),
            decisions=tuple(decisions),
            underfilled=data["underfilled"],
            elapsed_s=data["elapsed_s"],
            release_s=data["release_s"],
            truncated_rule=data["truncated_rule"],
            max_tokens=data["max_tokens"],
        )


def _decision(kept: bool, aborted: bool, truncated: bool) -> Decision:
    """A candidate's fate; a dropped one's reason is the first of aborted, truncated, not selected that applies."""
    if kept:
        return Decision.KEEP
    if aborted:
        return Decision.ABORTED
    if truncated:
        return Decision.TRUNCATED
    return Decision.NOT_SELECTED


def _values() -> list[str]:
    return [d.value for d in Decision]


def _check_keys(what: str, data: Mapping[str, Any], expected: Sequence[str]) -> None:
    missing = [key for key in expected if key not in data]
    extra = [key for key in data if key not in expected]
    if missing or extra:
        raise ValueError(f"{what} has missing keys {missing} and unknown keys {extra}; expected keys {list(expected)}")
