"""The engine actor's `AsyncLLM`, wrapped so that requests made inside a tracked task report to that task's run.

Both engine-side jobs that must see their requests while they decode use it, each with its own context variable: DARTS
groups (`rollout_actor`: a candidate's request id, prompt token ids and progress) and tail-batching groups
(`tail_groups`: a sample's request id and progress). A task sets its variable to `(run, index)` before it calls
upstream's executor; asyncio copies the context into the task, so the executor's call to `llm.generate` finds it here.
Requests made with the variable unset (evaluation, upstream's own calls, the other kind of group) pass through
untouched.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable


class EngineStream:
    """`llm` with `generate` tracked for requests made while `slot` holds `(run, index)`.

    `track(stream, run, index, request_id, prompt)` runs synchronously when the request is made (so the run knows
    its request id before the first output: an abort may come at once) and returns the stream the caller iterates.
    Every other attribute is the engine's own.
    """

    def __init__(self, llm, slot: contextvars.ContextVar, track: Callable):
        self._llm = llm
        self._slot = slot
        self._track = track

    def __getattr__(self, name):
        return getattr(self._llm, name)

    def generate(self, *args, **kwargs):
        stream = self._llm.generate(*args, **kwargs)
        slot = self._slot.get()
        if slot is None:
            return stream
        run, index = slot
        # Upstream's generate passes its TokensPrompt first and a fresh request id by keyword.
        return self._track(stream, run, index, kwargs["request_id"], args[0])
