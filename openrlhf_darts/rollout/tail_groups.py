"""Engine side of tail batching: whole prompt groups that the trainer can abort mid-flight (`--tail_batching.*`).

`DartsRolloutActor.generate_tail_group` and `abort_tail_groups` delegate here. A tail group is upstream's
`generate_responses` (num_samples executor calls of the unchanged `SingleTurnAgentExecutor`, `llm_engine=self`), run
as tasks this module can stop:

    generate_tail_group(group_id) ── n tasks ──> executor.execute(llm_engine=actor) ──> actor.generate ──> llm.generate
                                                                                            │ EngineStream: request id,
                                     TailRun <──────── progress (cumulative stream) ───────┘ tokens so far
    abort_tail_groups([ids])  ──> AsyncLLM.abort(request ids in flight): vLLM ends each stream with its partial
                                  output, whose length is recorded, and the sample leaves before it is scored;
                                  tasks not yet in vLLM, or already scoring, are cancelled
                              ──> returns once every task of those groups has ended: no request outlives the call

An `EngineStream` (rollout/engine_stream.py) keyed by this module's context variable wraps the actor's engine
(`actor.llm`, through `upstream.wrap_engine_llm`) the first time a tail group runs; requests outside a tail group
(evaluation, DARTS groups, weight-sync probes) pass through it untouched. Nothing here runs on the decode path except
one counter update per streamed output.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools

from openrlhf_darts import upstream
from openrlhf_darts.rollout.engine_stream import EngineStream

# (tail run, sample index) of the request the current asyncio task is generating; None outside tail groups.
_SLOT: contextvars.ContextVar[tuple["TailRun", int] | None] = contextvars.ContextVar("tail_slot", default=None)


class TailAborted(Exception):
    """A sample of an aborted group whose request vLLM ended early; raised so the executor never scores it."""


class TailRun:
    """Local state of one tail group: request ids, tokens generated so far, and whether the trainer aborted it."""

    def __init__(self, group_id: int, num_samples: int):
        self.group_id = group_id
        self.request_ids: list[str | None] = [None] * num_samples
        self.progress = [0] * num_samples  # tokens generated so far (the final output's count once it ended)
        self.finish_reasons: list[str | None] = [None] * num_samples  # vLLM's, once the request ended
        self.aborted = False
        self.tasks: list[asyncio.Task] = []
        self._llm_abort = None  # set by abort(): lets a request that was just being added abort itself

    async def abort(self, llm_abort) -> None:
        """Stop every sample: vLLM-abort the requests in flight, cancel the tasks outside vLLM."""
        self.aborted = True
        self._llm_abort = llm_abort
        in_flight = []
        for index, task in enumerate(self.tasks):
            if task.done():
                continue
            if self.request_ids[index] is None or self.finish_reasons[index] is not None:
                task.cancel()  # not submitted to vLLM yet, or its request ended and it is being scored
            else:
                in_flight.append(self.request_ids[index])
        if in_flight:
            await llm_abort(in_flight)

    async def on_output(self, index: int, output) -> None:
        completion = output.outputs[0]
        self.progress[index] = len(completion.token_ids)
        if output.finished:
            self.finish_reasons[index] = completion.finish_reason
        elif self.aborted and self._llm_abort is not None:
            # The abort landed while vLLM was still adding this request (an unknown id is a no-op there): abort it
            # now, at its first output.
            await self._llm_abort(self.request_ids[index])

    def record(self, responses: list[dict] | None) -> dict:
        """What `generate_tail_group` returns: the group's responses (None if aborted) and every sample's tokens."""
        return {
            "group_id": self.group_id,
            "aborted": self.aborted,
            "responses": responses,
            "lengths": list(self.progress),  # [n] tokens each sample generated (partial when cut short)
            "cut": [reason not in ("stop", "length") for reason in self.finish_reasons],  # [n] ended early / never ran
            "truncated": [reason == "length" for reason in self.finish_reasons],  # [n] hit max_tokens
        }


def _track_sample(stream, run: TailRun, index: int, request_id: str, prompt):
    """`EngineStream`'s hook for tail-group samples: the request id goes to the run at once (an abort may come before
    the first output), then every output's token count."""
    run.request_ids[index] = request_id
    return _tracked(stream, run, index)


async def _tracked(stream, run: TailRun, index: int):
    cut = False
    async for output in stream:
        await run.on_output(index, output)
        if output.finished and output.outputs[0].finish_reason == "abort" and run.aborted:
            cut = True  # vLLM's final output of an aborted request: recorded, not handed to the executor
            continue
        yield output
    if cut:
        raise TailAborted(f"group {run.group_id} sample {index}")


class TailGroups:
    """The tail groups running on one engine actor, by group id."""

    # Ray does not start an async actor's calls in submission order, so an abort can arrive before the call that
    # launches its group has started. Such ids wait in `_early_aborts`; `_returned` remembers recent finished ids so
    # that an abort of a group that already returned is told apart from one that has not started yet.
    RETURNED_MEMORY = 65536

    def __init__(self, actor):
        self._actor = actor
        upstream.wrap_engine_llm(actor, functools.partial(EngineStream, slot=_SLOT, track=_track_sample))
        self._runs: dict[int, TailRun] = {}
        self._early_aborts: set[int] = set()
        self._returned: collections.OrderedDict[int, None] = collections.OrderedDict()

    async def generate(
        self, group_id: int, prompt, label, sampling_params, max_length: int, hf_tokenizer, num_samples: int, images
    ) -> dict:
        if group_id in self._runs:
            raise ValueError(f"group_id={group_id} is already running on this engine; give every launch its own id")
        if sampling_params.n != 1:
            raise ValueError(
                f"sampling_params.n={sampling_params.n}; tail batching sends n=1 requests, one per sample"
            )
        run = TailRun(group_id, num_samples)
        if group_id in self._early_aborts:  # aborted before this call started: nothing reaches vLLM
            self._early_aborts.discard(group_id)
            run.aborted = True
            run.finish_reasons = ["abort"] * num_samples
            self._remember_returned(group_id)
            return run.record(None)
        self._runs[group_id] = run
        try:
            run.tasks = [
                asyncio.create_task(
                    self._sample(run, i, prompt, label, sampling_params, max_length, hf_tokenizer, images)
                )
                for i in range(num_samples)
            ]
            results = await asyncio.gather(*run.tasks, return_exceptions=True)
        finally:
            del self._runs[group_id]
            self._remember_returned(group_id)
        errors = [r for r in results if isinstance(r, BaseException)]
        if run.aborted:
            stray = [e for e in errors if not isinstance(e, (TailAborted, asyncio.CancelledError))]
            if stray:
                raise stray[0]  # an engine or reward error is never hidden behind the abort
            return run.record(None)
        if errors:
            # The sample that broke, not a sibling its failure cancelled.
            raise next((e for e in errors if not isinstance(e, asyncio.CancelledError)), errors[0])
        self._actor._check_rewards(group_id, range(len(results)), results)
        return run.record(results)

    async def _sample(self, run, index, prompt, label, sampling_params, max_length, hf_tokenizer, images):
        _SLOT.set((run, index))  # this task's own context copy
        try:
            return await self._actor.executor.execute(
                prompt=prompt,
                label=label,
                sampling_params=sampling_params,
                max_length=max_length,
                hf_tokenizer=hf_tokenizer,
                llm_engine=self._actor,
                images=images,
            )
        except (TailAborted, asyncio.CancelledError):
            raise
        except BaseException:
            # One sample broke (engine error, reward failure): stop its siblings so the group fails at once.
            for task in run.tasks:
                if task is not asyncio.current_task():
                    task.cancel()
            raise

    async def abort(self, group_ids) -> int:
        """Abort the given groups and wait until every one of their tasks has ended; returns how many were running.

        Ids of groups that already returned are ignored: their results are on their way to the caller. An id whose
        launching call has not started yet is remembered, and that call returns the group aborted at once.
        """
        runs = [self._runs[g] for g in group_ids if g in self._runs]
        self._early_aborts.update(g for g in group_ids if g not in self._runs and g not in self._returned)
        llm_abort = upstream.engine_llm(self._actor).abort
        await asyncio.gather(*(run.abort(llm_abort) for run in runs))
        await asyncio.gather(*(task for run in runs for task in run.tasks), return_exceptions=True)
        return len(runs)

    def _remember_returned(self, group_id: int) -> None:
        self._returned[group_id] = None
        while len(self._returned) > self.RETURNED_MEMORY:
            self._returned.popitem(last=False)
