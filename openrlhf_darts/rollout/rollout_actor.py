"""The DARTS engine actor: M'_i candidates per prompt on one engine, local finish tracking, early abort (spec 3a-c).

`DartsRolloutActor` extends OpenRLHF's `RolloutRayActor` one level deep. Upstream's `generate` and executor run
unchanged; a context variable marks which (group, candidate) a request belongs to, so the same code path serves eval
and upstream calls (variable unset) and DARTS groups (variable set):

    generate_group ── M'_i tasks ──> executor.execute(llm_engine=self) ──> self.generate ──> AsyncLLM.generate
                                                                             │ stream: progress per candidate
                                          _GroupRun <── finish / progress ──┘
                                          verdict: keep -> return (executor then computes the reward)
                                                   drop -> raise _Dropped (no reward call)
                                                   abort -> AsyncLLM.abort(request id): the stream ends with the
                                                            partial output, so its true length is recorded

No remote call sits on the decode path: progress and finishes are counted in this process. With token streaming
(`generate_group(..., stream_chunk_tokens=C)`), every candidate that is certain to be kept (`core.streaming.
chunk_eligible`) puts full chunks of its sequence (`core.streaming.chunk_spans`) into a local outbox while it decodes;
the trainer drains it with `pop_token_chunks` and forwards the chunks to the scorers (trainer/token_stream.py).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time

import ray

from openrlhf_darts.core.selection import GroupSelector
from openrlhf_darts.core.streaming import chunk_eligible, chunk_spans
from openrlhf_darts.core.types import CandidateResult, GroupOutcome, GroupPlan
from openrlhf_darts.rollout.engine_counters import read_engine_counters
from openrlhf_darts.upstream import RolloutRayActorBase

logger = logging.getLogger(__name__)

# (group run, candidate index) of the request the current asyncio task is generating; None outside DARTS groups.
_CANDIDATE: contextvars.ContextVar[tuple["_GroupRun", int] | None] = contextvars.ContextVar(
    "darts_candidate", default=None
)
CPU_KV_CACHE_BYTES = int(os.environ.get("OPENRLHF_DARTS_CPU_KV_CACHE_BYTES", 256 * 2**20))
# vLLM admits at most max_num_seqs requests at once (128 for AsyncLLM); benchmarks raise it so all candidates run together.
CPU_MAX_NUM_SEQS = os.environ.get("OPENRLHF_DARTS_CPU_MAX_NUM_SEQS")


class _Dropped(Exception):
    """A finished candidate that selection did not keep; it leaves before the executor scores it."""


class _GroupRun:
    """Local state of one prompt's candidates: progress, finishes, and the keep/drop/abort verdicts."""

    def __init__(self, plan: GroupPlan, abort_request, chunk_tokens: int | None = None, emit=None, group_id=None):
        self.plan = plan
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
        self.selector = GroupSelector(plan)
        self.progress = [0] * plan.num_candidates  # tokens generated so far, from the cumulative stream
        self.running = set(range(plan.num_candidates))
        self.finished: dict[int, tuple[int, bool]] = {}  # index -> (length, truncated)
        self.aborted: set[int] = set()
        loop = asyncio.get_running_loop()
        self.verdicts = [loop.create_future() for _ in range(plan.num_candidates)]
        self.tasks: list[asyncio.Task] = []
        self.kept: list[int] | None = None
        self.abort_tasks: list[asyncio.Future] = []
        self.start = time.perf_counter()
        self.release_s = 0.0

    def on_progress(self, index: int, token_ids) -> None:
        self.progress[index] = len(token_ids)
        if self.chunk_tokens is not None:
            self.token_ids[index] = token_ids
            self._stream_chunks([index])
        if self.kept is None and self.plan.shortest_only and self.selector.can_abort():
            self._maybe_release()

    def stream_key(self, index: int) -> str:
        """The id a candidate's chunks and its kept sample carry: `<group_id>/<candidate index>`."""
        return f"{self.group_id}/{index}"

    def _stream_chunks(self, indices) -> None:
        """Emit the full chunks of running, certainly-kept candidates that are ready (spec 3(g), token level)."""
        plan = self.plan
        if not chunk_eligible(plan.num_candidates, plan.num_keep, plan.num_long, len(self.finished)):
            return
        for index in indices:
            prompt = self.prompt_ids[index]
            if index not in self.running or prompt is None:
                continue
            generated = self.token_ids[index]
            for start, end in chunk_spans(len(prompt), len(generated), self.sent[index], self.chunk_tokens, False):
                tokens = [*prompt[start:end], *generated[max(0, start - len(prompt)) : end - len(prompt)]]
                self._emit({"key": self.stream_key(index), "group_id": self.group_id, "start": start, "tokens": tokens})
                self.sent[index] = end

    def on_finish(self, index: int, length: int, truncated: bool) -> None:
        if index in self.aborted:
            # It stopped on its own after the group released it (a race with the abort): still not kept.
            self.progress[index] = length
            return
        if index in self.finished:
            raise RuntimeError(
                f"candidate {index} called generate twice; DARTS supports single-turn executors only "
                "(multi-turn agents need a per-turn definition of length and finish)"
            )
        self.progress[index] = length
        self.finished[index] = (length, truncated)
        self.running.discard(index)
        self.selector.on_finish(index, length, truncated)
        if self.chunk_tokens is not None:
            self._stream_chunks(sorted(self.running))  # a finish may make the rest certain to be kept
        self._maybe_release()

    def _maybe_release(self) -> None:
        if self.kept is not None:
            return
        if self.running:
            if not (self.plan.shortest_only and self.selector.can_abort()):
                return
            # Spec 3(c): abort only when no running candidate can still finish at or below the release length.
            release = self.selector.release_length()
            if any(self.progress[r] <= release for r in self.running):
                return
        self._release()

    def _release(self) -> None:
        self.kept = self.selector.kept()
        self.release_s = time.perf_counter() - self.start
        keep = set(self.kept)
        for index in self.finished:
            self.verdicts[index].set_result(index in keep)
        for index in sorted(self.running):
            self.aborted.add(index)
            self.verdicts[index].set_result(False)
            if self.request_ids[index] is None:
                self.tasks[index].cancel()  # not submitted to vLLM yet: nothing to abort there
            else:
                self.abort_tasks.append(asyncio.ensure_future(self._abort_request(self.request_ids[index])))
        self.running.clear()

    def fail(self, error: BaseException) -> None:
        """A candidate broke (engine error, reward failure): stop the others so the group fails at once."""
        for index, task in enumerate(self.tasks):
            if not task.done() and not self.verdicts[index].done():
                self.verdicts[index].set_exception(error)
            task.cancel()

    def outcome(self) -> GroupOutcome:
        results = [
            CandidateResult(index=i, length=length, truncated=truncated, aborted=False)
            for i, (length, truncated) in self.finished.items()
        ]
        results += [CandidateResult(index=i, length=self.progress[i], truncated=False, aborted=True) for i in self.aborted]
        return GroupOutcome.from_results(
            self.plan, results, elapsed_s=time.perf_counter() - self.start, release_s=self.release_s
        )


class _ProgressStream:
    """Wraps the engine so every DARTS request's cumulative stream reports its token count to its group."""

    def __init__(self, llm):
        self._llm = llm

    def __getattr__(self, name):
        return getattr(self._llm, name)

    def generate(self, *args, **kwargs):
        stream = self._llm.generate(*args, **kwargs)
        slot = _CANDIDATE.get()
        if slot is None:
            return stream
        group, index = slot
        group.request_ids[index] = kwargs["request_id"]  # upstream passes a fresh id by keyword
        group.prompt_ids[index] = list(args[0]["prompt_token_ids"])  # upstream's TokensPrompt, first positional
        return _tracked(stream, group, index)


async def _tracked(stream, group: _GroupRun, index: int):
    async for output in stream:
        group.on_progress(index, output.outputs[0].token_ids)  # cumulative (upstream's default output kind)
        yield output


class DartsRolloutActor(RolloutRayActorBase):
    """OpenRLHF's engine actor plus `generate_group`: redundant candidates, dual-end selection, early abort."""

    async def __init__(self, *args, **kwargs):
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            # The CPU backend's bf16 output is wrong (docs/design.md); upstream hard-codes bf16 for GPUs.
            if kwargs.get("dtype") != "float32":
                logger.warning("vLLM CPU backend: dtype %s -> float32 (CPU bf16 output is wrong)", kwargs.get("dtype"))
                kwargs["dtype"] = "float32"
            kwargs.setdefault("kv_cache_memory_bytes", CPU_KV_CACHE_BYTES)
            # Weight sync without NCCL/CUDA IPC: bytes payloads through collective_rpc (backends/cpu/worker_extension).
            from openrlhf_darts.backends.cpu.worker_extension import EXTENSION_PATH

            kwargs["worker_extension_cls"] = EXTENSION_PATH
            if CPU_MAX_NUM_SEQS:
                kwargs.setdefault("max_num_seqs", int(CPU_MAX_NUM_SEQS))
        await super().__init__(*args, **kwargs)
        self.llm = _ProgressStream(self.llm)
        self._outcomes: list[dict] = []
        self._token_chunks: list[dict] = []

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        slot = _CANDIDATE.get()
        output = await super().generate(prompt_token_ids, sampling_params, multi_modal_data)
        if slot is None:
            return output
        group, index = slot
        completion = output.outputs[0]
        if index in group.aborted:
            # Aborted by the group: the final output carries the partial trajectory (or the full one, if it won the
            # race with the abort). Either way it is wasted work and is never scored.
            group.on_finish(index, len(completion.token_ids), completion.finish_reason == "length")
            raise _Dropped(index)
        if completion.finish_reason not in ("stop", "length"):
            raise RuntimeError(
                f"DARTS candidate {index} ended with finish_reason={completion.finish_reason!r}; only stop/length "
                "are expected while a group runs (was the engine put to sleep or paused with abort?)"
            )
        group.on_finish(index, len(completion.token_ids), completion.finish_reason == "length")
        if not await group.verdicts[index]:
            raise _Dropped(index)
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
    ) -> list[dict]:
        """Generate `plan.num_candidates` candidates for one prompt and return the `plan.num_keep` kept responses.

        The responses are upstream executor dicts, in ascending candidate index, with rewards computed for them alone.
        The group's `GroupOutcome` (all lengths, aborts, tokens) waits in this actor for `pop_group_outcomes`.
        With `stream_chunk_tokens` (token streaming), certainly-kept candidates emit chunks of that many tokens to
        `pop_token_chunks` while they decode, and every kept response carries `darts_stream_key`.
        """
        if isinstance(plan, dict):
            plan = GroupPlan(**plan)
        if not isinstance(plan, GroupPlan):
            raise TypeError(f"plan={plan!r} must be a GroupPlan or its dict")
        if getattr(sampling_params, "n", 1) != 1:
            raise ValueError(f"sampling_params.n={sampling_params.n}; DARTS sends one n=1 request per candidate")
        if stream_chunk_tokens is not None and (not isinstance(stream_chunk_tokens, int) or stream_chunk_tokens < 1):
            raise ValueError(f"stream_chunk_tokens={stream_chunk_tokens!r} must be a positive int or None")
        group = _GroupRun(plan, self.llm.abort, stream_chunk_tokens, self._token_chunks.append, group_id)
        group.tasks = [
            asyncio.create_task(
                self._run_candidate(group, i, prompt, label, sampling_params, max_length, hf_tokenizer, images)
            )
            for i in range(plan.num_candidates)
        ]
        results = await asyncio.gather(*group.tasks, return_exceptions=True)
        await asyncio.gather(*group.abort_tasks)  # abort errors are engine errors: raise them
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, (_Dropped, asyncio.CancelledError)):
                raise result
        if group.kept is None:
            raise RuntimeError(f"group {group_id} ended without a kept set: {results!r}")
        responses = [results[i] for i in group.kept]
        self._check_rewards(responses)
        if stream_chunk_tokens is not None:
            for i, response in zip(group.kept, responses):
                response["darts_stream_key"] = group.stream_key(i)
        self._outcomes.append({"group_id": group_id, "prompt": prompt, "outcome": group.outcome().to_dict()})
        return responses

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
        except (_Dropped, asyncio.CancelledError):
            raise
        except BaseException as error:
            group.fail(error)
            raise

    def _check_rewards(self, responses: list[dict]) -> None:
        # Upstream's executor logs a failed reward call at info level and returns reward=None; a DARTS step fails.
        if getattr(self.executor, "reward_endpoints", None) and any(r["reward"] is None for r in responses):
            raise RuntimeError(
                f"reward call to {self.executor.reward_endpoints} returned no reward for a kept sample; see the "
                "engine actor's log for the underlying error"
            )

    async def update_weights_from_lists(self, named_payloads: list, final: bool = True) -> list[int]:
        """CPU weight sync: `[(name, dtype, shape, bytes)]` to every worker; `final` loads the buffered sync
        (backends/cpu/worker_extension.py)."""
        return await self.llm.collective_rpc("update_weights_from_lists", args=(named_payloads, final))

    def pop_token_chunks(self) -> list[dict]:
        """Token-streaming chunks emitted since the last call, in emission order: `{"key", "group_id", "start",
        "tokens"}` with `tokens` = sequence[start : start + len(tokens)] (prompt + response token ids)."""
        chunks = list(self._token_chunks)
        self._token_chunks.clear()  # the same list: running groups hold its `append`
        return chunks

    def pop_group_outcomes(self) -> list[dict]:
        """Outcomes of the groups finished since the last call: one call per engine per step."""
        outcomes, self._outcomes = self._outcomes, []
        return outcomes

    def engine_iterations(self) -> int:
        """Engine steps that sampled a token since the engine started, counted by vLLM itself (baseline and DARTS
        alike; rollout/engine_counters.py): take differences around the phase to measure."""
        return read_engine_counters()["iterations"]

    def engine_finished_requests(self) -> int:
        """Requests that finished in the engine (stop or length, not aborted ones) since it started, by vLLM's count."""
        return read_engine_counters()["finished_requests"]


DartsRolloutRayActor = ray.remote(DartsRolloutActor)
