"""Per-candidate early stop of one group, driven by the engine's events (DARTS_SPEC.md §3(c)).

The engine actor reports each candidate's progress (tokens generated so far) and each finish; ``EarlyStop`` answers
which candidates to abort now and when the kept set is final. Standard library only.

**Rule (truncated_rule "exclude").** Once a shortest-only group has M valid finishes, let b = (l, j) be the M-th
shortest of them by (length, index). A candidate still pending (decoding, or waiting in the engine's queue with 0
tokens) with progress g_r can still be kept only while (g_r, r) <= b: it ends at least g_r long, and ties order by
index. So each pending candidate is aborted the moment (g_r, r) > b, on its own progress or when a finish lowers b,
and the kept set is final once no pending candidate is left: every one that could still be kept has finished. A
queued candidate at 0 tokens is never aborted this way (it could still finish shortest), but it no longer keeps its
decoding siblings alive, as the earlier all-or-nothing guard did.

**Rule (truncated_rule "long_end", the reference code).** A shortest-only group releases after M candidates stopped
for any reason, truncated ones included, and aborts everything still pending: its kept set is the first M to stop,
not the M shortest (a sibling that waited in the queue may have been shorter).

**Races.** An abort takes effect a little later in the engine. A candidate that stops by itself in between (its final
output is not an abort) counts as finished, with its true length, not as censored. Selection still decides whether it
is kept: under "exclude" it was aborted because (g_r, r) > b, and b only falls, so selection over all finished
candidates, racers included, keeps exactly what the group released; under "long_end" it stopped after the first M.

**Abort limit.** For each aborted candidate, ``abort_limits`` records the length from which it could no longer be
kept, as far as the engine knew: b's length (plus one when r orders before b's index) when its own progress crossed
b, or its progress at that moment when a finish lowered b. Its partial length minus that limit is the overshoot: what
it decoded between becoming useless and the engine applying the abort.
"""

from openrlhf_darts.core._checks import check_bool, check_int
from openrlhf_darts.core.selection import GroupSelector
from openrlhf_darts.core.types import CandidateResult, GroupPlan


class EarlyStop:
    """One group's candidates as the engine sees them: pending, finished, aborted; see the module docstring."""

    def __init__(self, plan: GroupPlan, truncated_rule: str = "exclude") -> None:
        self.selector = GroupSelector(plan, truncated_rule)
        self.plan = plan
        self.truncated_rule = truncated_rule
        self.progress = [0] * plan.num_candidates  # tokens generated so far; the final length once stopped
        self.pending: set[int] = set(range(plan.num_candidates))  # neither finished nor aborted
        self.finished: dict[int, tuple[int, bool]] = {}  # stopped by itself: index -> (length, truncated)
        self.abort_limits: dict[int, int] = {}  # aborted -> length from which it could no longer be kept
        self.raced: set[int] = set()  # aborted, but stopped by itself before the abort took effect
        self.kept: tuple[int, ...] | None = None  # final kept set, ascending; None while it may change

    def on_progress(self, index: int, tokens: int) -> list[int]:
        """Candidate ``index`` has generated ``tokens`` so far; returns the candidates to abort now, ascending."""
        self._check_index(index)
        check_int("tokens", tokens, minimum=0)
        if index not in self.pending:
            if index not in self.finished:
                self.progress[index] = max(self.progress[index], tokens)  # aborted: decoding until the engine stops it
            return []
        previous = self.progress[index]
        if tokens < previous:
            raise ValueError(f"candidate {index} reported tokens={tokens} after {previous}; progress is cumulative")
        self.progress[index] = tokens
        return self._prune({index: previous})

    def on_finish(self, index: int, length: int, truncated: bool) -> list[int]:
        """Candidate ``index`` stopped by itself (EOS or the length cap); returns the candidates to abort now."""
        self._check_index(index)
        check_int("length", length, minimum=0)
        check_bool("truncated", truncated)
        if index in self.finished:
            raise ValueError(f"candidate index={index} finished twice; each candidate finishes at most once")
        if index in self.abort_limits:
            self.raced.add(index)  # its abort was in flight: it counts as finished, with its true length
        else:
            self.pending.discard(index)
        self.finished[index] = (length, truncated)
        self.progress[index] = length
        self.selector.on_finish(index, length, truncated)
        return self._prune({})

    def on_aborted(self, index: int, length: int) -> None:
        """The engine applied the abort of candidate ``index`` after ``length`` tokens (its partial length)."""
        self._check_index(index)
        check_int("length", length, minimum=0)
        if index not in self.abort_limits or index in self.raced:
            raise ValueError(f"candidate {index} reported an abort but was not aborted (or finished by itself)")
        self.progress[index] = length

    def releasable(self) -> tuple[int, ...] | None:
        """Kept candidates whose place in the kept set is already final, ascending; None while none is (§3(g)).

        Shortest-only groups: the kept set at its release (``kept``), all M at once. Dual-end groups: the K short
        members once no pending candidate can displace them (``GroupSelector.short_end_final``, the release rule of
        §3(c) with K in place of M); the L long members are known only when every candidate has stopped.
        """
        if self.plan.shortest_only:
            return self.kept
        short = self.selector.short_end_final([(self.progress[r], r) for r in self.pending])
        return None if short is None else tuple(short)

    @property
    def aborted(self) -> list[int]:
        """Candidates stopped by an abort (racers excluded), ascending."""
        return sorted(set(self.abort_limits) - self.raced)

    def results(self) -> list[CandidateResult]:
        """One record per candidate, once nothing is pending: finished ones with their length, aborted ones partial."""
        if self.pending:
            raise ValueError(f"candidates {sorted(self.pending)} are still pending; results() needs every one stopped")
        results = [
            CandidateResult(j, length, truncated, aborted=False) for j, (length, truncated) in self.finished.items()
        ]
        results += [CandidateResult(j, self.progress[j], truncated=False, aborted=True) for j in self.aborted]
        return sorted(results, key=lambda r: r.index)

    def _prune(self, previous: dict[int, int]) -> list[int]:
        if self.kept is not None:
            return []
        aborts = []
        if self.selector.can_abort():  # shortest-only, with its release condition met
            bound = self.selector.release_key()
            for r in sorted(self.pending):
                if self.truncated_rule == "long_end":
                    self.abort_limits[r] = self.progress[r]  # released at the M-th stop: useless from now on
                elif (self.progress[r], r) > bound:
                    # The shortest length at which (length, r) orders after b; before this event it was still keepable.
                    crossing = bound[0] + (0 if r > bound[1] else 1)
                    self.abort_limits[r] = max(previous.get(r, self.progress[r]), crossing)
                else:
                    continue
                aborts.append(r)
            self.pending.difference_update(aborts)
        if not self.pending:
            self.kept = tuple(self.selector.kept())
        return aborts

    def _check_index(self, index: int) -> None:
        check_int("index", index, minimum=0)
        if index >= self.plan.num_candidates:
            raise ValueError(
                f"index={index} is out of range; expected a candidate index in [0, {self.plan.num_candidates})"
            )
