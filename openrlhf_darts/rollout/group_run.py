"""One prompt's candidates on the engine: `GroupRun`, the local state the DARTS engine actor keeps per group (spec
3a-c). It owns the early-stop state machine (`core.early_stop`), the request ids, each candidate's verdict (keep,
drop, abort), the abort calls, the token-streaming outbox and the early release of final kept candidates. It makes no
remote call and knows nothing of vLLM beyond the abort coroutine it is given; `rollout_actor.DartsRolloutActor`
feeds it progress and finishes from the engine's stream.
"""

from __future__ import annotations

import asyncio
import time

from openrlhf_darts.core.early_stop import EarlyStop
from openrlhf_darts.core.streaming import chunk_eligible, chunk_spans
from openrlhf_darts.core.types import GroupOutcome, GroupPlan


class Dropped(Exception):
    """A finished candidate that selection did not keep; it leaves before the executor scores it."""


class GroupRun:
    """Local state of one prompt's candidates: the early-stop state machine (core.early_stop), request ids, verdicts
    and abort calls, the token-streaming outbox and the early release of final kept candidates."""

    def __init__(
        self,
        plan: GroupPlan,
        abort_request,
        truncated_rule: str = "exclude",
        chunk_tokens: int | None = None,
        emit=None,
        group_id=None,
        release=None,
    ):
        self.plan = plan
        self.stop = EarlyStop(plan, truncated_rule)
        self._abort_request = abort_request  # coroutine function: AsyncLLM.abort(request_id)
        # Token streaming: chunk size C and the outbox's append (None: off); per candidate, its prompt token ids,
        # the latest cumulative response token ids and how many sequence tokens went out already.
        self.chunk_tokens = chunk_tokens
        self._emit = emit
        self.group_id = group_id
        self.prompt_ids: list[list[int] | None] = [None] * plan.num_candidates
        self.token_ids: list = [()] * plan.num_candidates
        self.sent = [0] * plan.num_candidates
        self.request_ids: list[str | None] = [None] * plan.num_candidates
        # max_tokens each submitted candidate's request carried to the engine: the group's generation cap.
        self.max_tokens: dict[int, int | None] = {}
        # Tokens seen per candidate, and the most tokens one stream output added (vLLM merges engine steps into one
        # output when the consumer falls behind; an abort's overshoot is bounded by it, docs/design.md).
        self.seen = [0] * plan.num_candidates
        self.largest_output = [0] * plan.num_candidates
        loop = asyncio.get_running_loop()
        self.verdicts = [loop.create_future() for _ in range(plan.num_candidates)]
        self.tasks: list[asyncio.Task] = []
        self.abort_tasks: list[asyncio.Future] = []
        self.abort_sent: set[int] = set()  # candidates whose abort reached vLLM's front end
        self.abort_resent = 0
        self.released = False
        self.start = time.perf_counter()
        self.release_s = 0.0
        # Early release (spec 3(g)): `release(indices, responses)` hands kept candidates on as soon as their place in
        # the kept set is final and their rewards are in; None: the group returns its kept responses at the end.
        self._release = release
        self.early: tuple[int, ...] = ()  # candidates released before the group ended
        self.early_s: float | None = None  # when they became final
        self.release_task: asyncio.Future | None = None
        self.error: BaseException | None = None  # the first failure of a candidate (or of the step): the group's
        # Per candidate, what upstream's executor logged while it ran (it logs a failed reward call and goes on).
        self.executor_log: dict[int, list[str]] = {}

    @property
    def kept(self) -> tuple[int, ...] | None:
        return self.stop.kept

    def on_progress(self, index: int, token_ids, finished: bool) -> None:
        self.largest_output[index] = max(self.largest_output[index], len(token_ids) - self.seen[index])
        self.seen[index] = len(token_ids)
        if self.chunk_tokens is not None:
            self.token_ids[index] = token_ids
            self._stream_chunks([index])
        if finished:
            return  # the final output: generate() records the finish or the abort, with its finish reason
        if index in self.abort_sent:
            # vLLM's front end dropped the abort because the request was not registered yet: send it again.
            self.abort_resent += 1
            self.abort_tasks.append(asyncio.ensure_future(self._abort(index)))
            return
        self._apply(self.stop.on_progress(index, len(token_ids)))
        self._release_final()

    def stream_key(self, index: int) -> str:
        """The id a candidate's chunks and its kept sample carry: `<group_id>/<candidate index>`."""
        return f"{self.group_id}/{index}"

    def _stream_chunks(self, indices) -> None:
        """Emit the full chunks of pending, certainly-kept candidates that are ready (spec 3(g), token level)."""
        plan, stop = self.plan, self.stop
        ranked = stop.selector.ranked_finishes()
        for index in indices:
            prompt = self.prompt_ids[index]
            if index not in stop.pending or prompt is None:
                continue
            generated = self.token_ids[index]
            key = (len(generated), index)
            if not chunk_eligible(plan.num_candidates, plan.num_keep, plan.num_long, len(stop.pending), key, ranked):
                continue
            for start, end in chunk_spans(len(prompt), len(generated), self.sent[index], self.chunk_tokens, False):
                tokens = [*prompt[start:end], *generated[max(0, start - len(prompt)) : end - len(prompt)]]
                self._emit(
                    {"key": self.stream_key(index), "group_id": self.group_id, "start": start, "tokens": tokens}
                )
                self.sent[index] = end

    def on_finish(self, index: int, length: int, truncated: bool) -> None:
        """Candidate `index` stopped by itself (also when its abort was in flight: it then counts as finished)."""
        if index in self.stop.finished:
            raise RuntimeError(
                f"candidate {index} called generate twice; DARTS supports single-turn executors only "
                "(multi-turn agents need a per-turn definition of length and finish)"
            )
        self._apply(self.stop.on_finish(index, length, truncated))
        self._release_final()
        if self.chunk_tokens is not None:
            self._stream_chunks(sorted(self.stop.pending))  # a finish may make the rest certain to be kept

    def on_aborted(self, index: int, length: int) -> None:
        """vLLM ended an aborted candidate's stream after `length` tokens."""
        self.stop.on_aborted(index, length)

    def _apply(self, aborts: list[int]) -> None:
        for index in aborts:
            self.verdicts[index].set_result(False)
            if self.request_ids[index] is None:
                self.tasks[index].cancel()  # not submitted to vLLM yet: nothing to abort there
            else:
                self.abort_tasks.append(asyncio.ensure_future(self._abort(index)))
        if self.stop.kept is not None and not self.released:
            self.released = True
            self.release_s = time.perf_counter() - self.start
            keep = set(self.stop.kept)
            for index in self.stop.finished:
                if not self.verdicts[index].done():  # racers got False when they were aborted
                    self.verdicts[index].set_result(index in keep)

    def _release_final(self) -> None:
        """Early release: once kept candidates are final (`EarlyStop.releasable`: a dual-end group's K short members
        while its long end still decodes, a shortest-only group's n at its release), let their executors score them
        now and hand them on when scored. A dual-end group whose short end is final only at its last finish releases
        everything at the end instead."""
        if self._release is None or self.release_task is not None:
            return
        members = self.stop.releasable()
        if members is None or (not self.plan.shortest_only and self.stop.kept is not None):
            return
        self.early, self.early_s = members, time.perf_counter() - self.start
        for index in members:
            if not self.verdicts[index].done():
                self.verdicts[index].set_result(True)  # kept whatever the rest does: the executor computes its reward
        self.release_task = asyncio.ensure_future(self._release_when_scored(members))

    async def _release_when_scored(self, members: tuple[int, ...]) -> None:
        results = await asyncio.gather(*(self.tasks[j] for j in members), return_exceptions=True)
        if any(isinstance(r, BaseException) for r in results):
            return  # a candidate's own error (or the group's cancellation) fails the group in generate_group
        try:
            self._release(members, results)
        except BaseException as error:  # e.g. a reward call that returned nothing: stop the rest now
            self.fail(error)
            raise

    async def _abort(self, index: int) -> None:
        # Marked before the call: AsyncLLM.abort finalizes the request's output synchronously, before its first await.
        self.abort_sent.add(index)
        await self._abort_request(self.request_ids[index])

    def fail(self, error: BaseException, index: int | None = None) -> None:
        """Candidate `index` broke (engine error, unexpected finish), or the step failed elsewhere (index None): stop
        the others so the group fails at once. Their tasks are cancelled, which aborts their vLLM requests (AsyncLLM
        aborts a request whose stream is cancelled); generate_group waits for that, then raises the first error."""
        if self.error is None:
            self.error = error
            if index is not None:
                error.add_note(
                    f"DARTS group {self.group_id}: candidate {index} of {self.plan.num_candidates} failed; the "
                    "group's other candidates were cancelled and their vLLM requests aborted"
                )
        for j, task in enumerate(self.tasks):
            if not task.done() and not self.verdicts[j].done():
                self.verdicts[j].set_exception(error)
            task.cancel()

    def on_request(self, index: int, max_tokens: int | None) -> None:
        """Candidate `index` goes to the engine with this `max_tokens` (upstream's executor computed it)."""
        self.max_tokens[index] = max_tokens

    def cap(self) -> int | None:
        """The group's generation cap: the one max_tokens its requests carried (all share the prompt). None when the
        executor left it unset, so vLLM chose it (max_model_len - prompt tokens) and the actor never saw it."""
        caps = set(self.max_tokens.values())
        if len(caps) > 1:
            raise RuntimeError(
                f"group {self.group_id}'s candidates reached the engine with different max_tokens "
                f"{sorted(caps, key=str)}; DARTS expects one prompt and one cap per group (single-turn executors)"
            )
        return caps.pop() if caps else None

    def outcome(self) -> GroupOutcome:
        return GroupOutcome.from_results(
            self.plan,
            self.stop.results(),
            elapsed_s=time.perf_counter() - self.start,
            release_s=self.release_s,
            truncated_rule=self.stop.truncated_rule,
            kept=self.stop.kept,
            max_tokens=self.cap(),
        )

    def record(self, prompt: str) -> dict:
        """What `pop_group_outcomes` returns for this group: the outcome plus abort diagnostics."""
        return {
            "group_id": self.group_id,
            "prompt": prompt,
            "outcome": self.outcome().to_dict(),
            # [M'_i] per aborted candidate, the length from which it could no longer be kept (core.early_stop).
            "abort_limits": [self.stop.abort_limits.get(j) for j in range(self.plan.num_candidates)],
            "stop_order": list(self.stop.finished),  # candidates that stopped by themselves, in the order seen
            "raced": sorted(self.stop.raced),  # aborted candidates that finished by themselves first
            "abort_resent": self.abort_resent,
            "largest_output": list(self.largest_output),  # [M'_i] most tokens one stream output added
            # Early release: the candidates handed on before the group ended, and when they became final.
            "early": list(self.early),
            "early_s": self.early_s,
        }
