"""The DARTS engine actor: M'_i candidates per prompt on one engine, local finish tracking, early abort (spec 3a-c).

`DartsRolloutActor` extends OpenRLHF's `RolloutRayActor` one level deep. Upstream's `generate` and executor run
unchanged; a context variable marks which (group, candidate) a request belongs to, so the same code path serves eval
and upstream calls (variable unset) and DARTS groups (variable set):

    generate_group ── M'_i tasks ──> executor.execute(llm_engine=self) ──> self.generate ──> AsyncLLM.generate
                                                                             │ stream: progress per candidate
                                          GroupRun <── finish / progress ──┘
                                          verdict: keep -> return (executor then computes the reward)
                                                   drop -> raise Dropped (no reward call)
                                                   abort -> AsyncLLM.abort(request id): the stream ends with the
                                                            partial output, so its true length is recorded

Shortest-only groups abort each candidate on its own, the moment its progress orders after the current release bound
(`core.early_stop`): siblings still waiting in vLLM's queue no longer keep the others decoding.

No remote call sits on the decode path: progress and finishes are counted in this process. With token streaming
(`generate_group(..., stream_chunk_tokens=C)`), every candidate that is certain to be kept (`core.streaming.
chunk_eligible`) puts full chunks of its sequence (`core.streaming.chunk_spans`) into a local outbox while it decodes;
the trainer drains it with `pop_token_chunks` and forwards the chunks to the scorers (trainer/token_stream.py).

With early release (`generate_group(..., early_release=True)`, the streaming collector of `--darts.stream`), kept
candidates whose place in the kept set is final (`EarlyStop.releasable`: a dual-end group's K short members once no
sibling can displace them) get their verdict at once, so the executor scores them while the long end still decodes,
and go into a second outbox; `pop_stream_outbox` drains both outboxes in one call.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging

import ray

from openrlhf_darts import upstream
from openrlhf_darts.backends import engine_kwargs as backend_engine_kwargs
from openrlhf_darts.backends.cpu.engine import CpuWeightSync
from openrlhf_darts.core.types import TRUNCATED_RULES, GroupPlan
from openrlhf_darts.rollout.engine_counters import read_engine_counters
from openrlhf_darts.rollout.engine_stream import EngineStream
from openrlhf_darts.rollout.group_run import Dropped, GroupRun
from openrlhf_darts.upstream import RolloutRayActorBase

# (group run, candidate index) of the request the current asyncio task is generating; None outside DARTS groups.
_CANDIDATE: contextvars.ContextVar[tuple[GroupRun, int] | None] = contextvars.ContextVar(
    "darts_candidate", default=None
)
# Whether the current candidate task called generate already (a second call means a multi-turn executor).
_GENERATED: contextvars.ContextVar[bool] = contextvars.ContextVar("darts_generated", default=False)


class _ExecutorLog(logging.Handler):
    """Keeps what upstream's executor logs while a DARTS candidate runs, on that candidate's group: upstream logs a
    failed reward call at info level and returns reward=None, so this is where its cause is (`_check_rewards`)."""

    def emit(self, record: logging.LogRecord) -> None:
        slot = _CANDIDATE.get()  # the executor logs from the candidate's own task
        if slot is not None:
            slot[0].executor_log.setdefault(slot[1], []).append(record.getMessage())


def _track_candidate(stream, group: GroupRun, index: int, request_id: str, prompt):
    """`EngineStream`'s hook for DARTS candidates: the request id (for its abort) and prompt token ids (for its token
    chunks) go to the group at once; the stream then reports every output's token count."""
    group.request_ids[index] = request_id
    group.prompt_ids[index] = list(prompt["prompt_token_ids"])  # upstream's TokensPrompt
    return _tracked(stream, group, index)


async def _tracked(stream, group: GroupRun, index: int):
    async for output in stream:
        group.on_progress(index, output.outputs[0].token_ids, output.finished)  # cumulative (upstream's default)
        yield output


class DartsRolloutActor(CpuWeightSync, RolloutRayActorBase):
    """OpenRLHF's engine actor plus `generate_group`: redundant candidates, dual-end selection, early abort.

    `CpuWeightSync` adds the CPU weight sync's remote method (backends/cpu/engine.py); it is unused on GPU."""

    async def __init__(self, *args, **kwargs):
        # The platform's engine set-up (on CPU: float32, KV cache size, the weight-sync worker extension).
        await super().__init__(*args, **backend_engine_kwargs(kwargs))
        upstream.wrap_engine_llm(self, functools.partial(EngineStream, slot=_CANDIDATE, track=_track_candidate))
        upstream.executor_logger().addHandler(_ExecutorLog())
        self._outcomes: list[dict] = []
        self._token_chunks: list[dict] = []
        self._released_parts: list[dict] = []  # early release: kept responses waiting for pop_stream_outbox
        self._live_groups: set[GroupRun] = set()  # groups whose candidates are still running (abort_groups)

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        slot = _CANDIDATE.get()
        if slot is not None:
            if _GENERATED.get():
                raise RuntimeError(
                    f"DARTS candidate {slot[1]} called generate a second time: the executor of "
                    "--train.agent_func_path is multi-turn, and DARTS needs single-turn executors (selection and early "
                    "abort rank the length of one completion). Use a single-turn AgentExecutor, or drop --darts.enable "
                    "for this agent"
                )
            _GENERATED.set(True)  # in the candidate task's own context, which its executor awaits generate in
            # Upstream's generate passes these params (a copy) to AsyncLLM: their max_tokens is the candidate's cap, as
            # the executor computed it (max_length - prompt tokens when max_new_tokens is None).
            slot[0].on_request(slot[1], sampling_params.max_tokens)
        output = await super().generate(prompt_token_ids, sampling_params, multi_modal_data)
        if slot is None:
            return output
        group, index = slot
        completion = output.outputs[0]
        if index in group.stop.abort_limits:
            # Aborted by the group: the final output carries the partial trajectory, or the whole one if the candidate
            # stopped by itself before the abort took effect (then it counts as finished, core.early_stop). Either way
            # it is not kept and never scored.
            if completion.finish_reason == "abort":
                group.on_aborted(index, len(completion.token_ids))
            elif completion.finish_reason in ("stop", "length"):
                group.on_finish(index, len(completion.token_ids), completion.finish_reason == "length")
            else:
                raise RuntimeError(
                    f"DARTS group {group.group_id}: aborted candidate {index} ended with "
                    f"finish_reason={completion.finish_reason!r}; expected abort, stop or length"
                )
            raise Dropped(index)
        if completion.finish_reason not in ("stop", "length"):
            raise RuntimeError(
                f"DARTS group {group.group_id}: candidate {index} ended with finish_reason="
                f"{completion.finish_reason!r} after {len(completion.token_ids)} tokens, though its group did not "
                "abort it; only stop/length are expected while a group runs (was the engine put to sleep, paused "
                "with abort, or its request aborted by another caller?)"
            )
        group.on_finish(index, len(completion.token_ids), completion.finish_reason == "length")
        if not await group.verdicts[index]:
            raise Dropped(index)
        return output

    async def generate_group(
        self,
        prompt: str,
        label,
        sampling_params,
        max_length: int,
        hf_tokenizer,
        plan: GroupPlan | dict,
        images=None,
        group_id: int | None = None,
        stream_chunk_tokens: int | None = None,
        truncated_rule: str = "exclude",
        early_release: bool = False,
    ) -> list[dict]:
        """Generate `plan.num_candidates` candidates for one prompt and return the `plan.num_keep` kept responses.

        The responses are upstream executor dicts, in ascending candidate index, with rewards computed for them alone.
        The group's `GroupOutcome` (all lengths, aborts, tokens) waits in this actor for `pop_group_outcomes`.
        With `stream_chunk_tokens` (token streaming), certainly-kept candidates emit chunks of that many tokens to
        `pop_token_chunks` while they decode, and every kept response carries `darts_stream_key`.
        `truncated_rule` (`--darts.truncated`) says how selection ranks candidates the length cap stopped.

        With `early_release` (the streaming collector, `--darts.stream`; needs `group_id`) the kept responses leave
        through the outbox instead (`pop_stream_outbox`), in parts `{"group_id", "candidates", "responses"}`, each
        part in ascending candidate index and scored when it goes out: a dual-end group's K short members as soon as
        no sibling can displace them (`EarlyStop.releasable`), then the rest when the group ends; a shortest-only
        group's n at its release. The call then returns [] once the group has ended and its last part is out. If the
        group fails or is cancelled, its candidates are stopped (vLLM aborts their requests) and its parts and chunks
        are taken back out of the outboxes before the error propagates.
        """
        if isinstance(plan, dict):
            plan = GroupPlan(**plan)
        if not isinstance(plan, GroupPlan):
            raise TypeError(f"plan={plan!r} must be a GroupPlan or its dict")
        if getattr(sampling_params, "n", 1) != 1:
            raise ValueError(f"sampling_params.n={sampling_params.n}; DARTS sends one n=1 request per candidate")
        if stream_chunk_tokens is not None and (not isinstance(stream_chunk_tokens, int) or stream_chunk_tokens < 1):
            raise ValueError(f"stream_chunk_tokens={stream_chunk_tokens!r} must be a positive int or None")
        if truncated_rule not in TRUNCATED_RULES:
            raise ValueError(f"truncated_rule={truncated_rule!r} is not one of {TRUNCATED_RULES} (--darts.truncated)")
        if early_release and group_id is None:
            raise ValueError("early_release=True needs a group_id: released parts are matched to their group by it")

        def finish_part(indices, responses: list[dict]) -> None:
            self._check_rewards(group_id, indices, responses, group.executor_log)
            if stream_chunk_tokens is not None:
                for i, response in zip(indices, responses):
                    response["darts_stream_key"] = group.stream_key(i)

        def release(indices, responses: list[dict]) -> None:
            finish_part(indices, responses)
            self._released_parts.append({"group_id": group_id, "candidates": list(indices), "responses": responses})

        group = GroupRun(
            plan,
            upstream.engine_llm(self).abort,
            truncated_rule,
            stream_chunk_tokens,
            self._token_chunks.append,
            group_id,
            release if early_release else None,
        )
        group.tasks = [
            asyncio.create_task(
                self._run_candidate(group, i, prompt, label, sampling_params, max_length, hf_tokenizer, images)
            )
            for i in range(plan.num_candidates)
        ]
        self._live_groups.add(group)
        try:
            try:
                results = await asyncio.gather(*group.tasks, return_exceptions=True)
                await asyncio.gather(*group.abort_tasks)  # abort errors are engine errors: raise them
            finally:
                self._live_groups.discard(group)
            if group.error is not None:
                raise group.error  # the first failure of a candidate, of its release, or of the step (abort_groups)
            for result in results:
                if isinstance(result, BaseException) and not isinstance(result, (Dropped, asyncio.CancelledError)):
                    raise result
            if group.kept is None:
                raise RuntimeError(f"group {group_id} ended without a kept set: {results!r}")
            if group.release_task is not None:
                await group.release_task  # the early part is out (or its error raises here)
            rest = [i for i in group.kept if i not in group.early]
            responses = [results[i] for i in rest]
            if early_release and rest:
                release(rest, responses)
            else:
                finish_part(rest, responses)
        except BaseException:
            await self._stop_group(group)
            raise
        self._outcomes.append(group.record(prompt))
        return [] if early_release else responses

    async def _stop_group(self, group: GroupRun) -> None:
        """A failed or cancelled group: stop its candidates (cancelling a request's stream makes vLLM abort it), wait
        until they are gone, and take its parts and token chunks back out of the outboxes."""
        running = [*group.tasks, *([group.release_task] if group.release_task else [])]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, *group.abort_tasks, return_exceptions=True)
        self._token_chunks[:] = [c for c in self._token_chunks if c["group_id"] != group.group_id]  # same list object
        self._released_parts[:] = [p for p in self._released_parts if p["group_id"] != group.group_id]

    async def _run_candidate(self, group, index, prompt, label, sampling_params, max_length, hf_tokenizer, images):
        _CANDIDATE.set((group, index))  # this task's own context copy
        try:
            return await self.executor.execute(
                prompt=prompt,
                label=label,
                sampling_params=sampling_params,
                max_length=max_length,
                hf_tokenizer=hf_tokenizer,
                llm_engine=self,
                images=images,
            )
        except (Dropped, asyncio.CancelledError):
            raise
        except BaseException as error:
            group.fail(error, index)
            raise

    def _check_rewards(
        self, group_id, indices, responses: list[dict], executor_log: dict[int, list[str]] | None = None
    ) -> None:
        # Upstream's executor logs a failed reward call at info level and returns reward=None; a DARTS step fails,
        # naming what the executor logged for that candidate (the reward function's exception, the HTTP error).
        endpoints = upstream.reward_endpoints(self.executor)
        missing = [j for j, r in zip(indices, responses, strict=True) if r["reward"] is None]
        if endpoints and missing:
            j = missing[0]
            logged = (executor_log or {}).get(j)
            cause = (
                f"upstream's executor logged: {' | '.join(logged)}"
                if logged
                else "upstream's executor logged no error, so the reward function or endpoint answered without a "
                "'rewards' value for it"
            )
            raise RuntimeError(
                f"DARTS group {group_id}: the reward call to {endpoints} returned no reward for kept candidate "
                f"{j} ({len(missing)} of {len(responses)} kept samples without one); {cause}"
            )

    async def abort_groups(self, reason: str) -> int:
        """The step failed elsewhere (another group, another engine, the trainer): fail every group this actor runs
        and return once their candidate tasks have ended, i.e. once none of their requests is left in vLLM. Each such
        `generate_group` raises `RuntimeError(reason)`. Returns how many groups were running."""
        groups = list(self._live_groups)
        for group in groups:
            group.fail(RuntimeError(f"DARTS group {group.group_id} aborted: {reason}"))
        await asyncio.gather(*(task for group in groups for task in group.tasks), return_exceptions=True)
        await asyncio.gather(*(task for group in groups for task in group.abort_tasks), return_exceptions=True)
        return len(groups)

    def pop_token_chunks(self) -> list[dict]:
        """Token-streaming chunks emitted since the last call, in emission order: `{"key", "group_id", "start",
        "tokens"}` with `tokens` = sequence[start : start + len(tokens)] (prompt + response token ids)."""
        chunks = list(self._token_chunks)
        self._token_chunks.clear()  # the same list: running groups hold its `append`
        return chunks

    def pop_stream_outbox(self) -> dict[str, list[dict]]:
        """Everything the streaming collector drains, taken at once: `{"chunks": pop_token_chunks(), "parts": [...]}`,
        `parts` being the early-released kept responses (`generate_group(..., early_release=True)`) in release order.
        Taken together, so every chunk of a sample emitted before its part was released is in the same answer or an
        earlier one."""
        parts = list(self._released_parts)
        self._released_parts.clear()
        return {"chunks": self.pop_token_chunks(), "parts": parts}

    def pop_group_outcomes(self) -> list[dict]:
        """Outcomes of the groups finished since the last call: one call per engine per step."""
        outcomes, self._outcomes = self._outcomes, []
        return outcomes

    # ---- tail batching, the comparison arm (--tail_batching.*; rollout/tail_groups.py) -------------------------------
    _tail_groups = None  # tail_groups.TailGroups, built by the first tail-group call (it wraps self.llm)

    async def generate_tail_group(
        self, group_id: int, prompt: str, label, sampling_params, max_length: int, hf_tokenizer, num_samples: int,
        images=None,
    ) -> dict:  # fmt: skip
        """Upstream's `generate_responses` for one prompt, abortable as a whole by `abort_tail_groups(group_id)`.

        Returns `{"group_id", "aborted", "responses", "lengths", "cut", "truncated"}`: the `num_samples` executor
        dicts (None when aborted) and, per sample, the tokens it generated and whether it was cut short.
        """
        from openrlhf_darts.rollout.tail_groups import TailGroups

        if self._tail_groups is None:
            self._tail_groups = TailGroups(self)
        return await self._tail_groups.generate(
            group_id, prompt, label, sampling_params, max_length, hf_tokenizer, num_samples, images
        )

    async def abort_tail_groups(self, group_ids: list[int]) -> int:
        """Abort these tail groups; returns once none of their requests is left in vLLM (how many were running)."""
        if self._tail_groups is None:  # no tail group has started yet, but their launches may be on the way
            from openrlhf_darts.rollout.tail_groups import TailGroups

            self._tail_groups = TailGroups(self)
        return await self._tail_groups.abort(group_ids)

    # ---- engine counters (vLLM's own; rollout/engine_counters.py) -------------------------------------------------
    def engine_iterations(self) -> int:
        """Engine steps that sampled a token since the engine started, counted by vLLM itself (baseline and DARTS
        alike; rollout/engine_counters.py): take differences around the phase to measure."""
        return read_engine_counters()["iterations"]

    def engine_finished_requests(self) -> int:
        """Requests that finished in the engine (stop or length, not aborted ones) since it started, by vLLM's count."""
        return read_engine_counters()["finished_requests"]


DartsRolloutRayActor = ray.remote(DartsRolloutActor)
