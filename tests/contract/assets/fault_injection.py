"""A test subclass of the DARTS engine actor that injects one fault into one candidate of one group.

Fault injection on the real engine, not a mock: the subclass runs the real vLLM CPU engine and the product's
`generate_group`, and only its `generate` (called once per candidate by upstream's executor) misbehaves for the one
armed candidate, once that candidate's own request has decoded `after_tokens` tokens in vLLM:

- "error": the engine fails the request. Like vLLM does on a request-level error (it aborts the request, then raises
  `EngineGenerateError` from the stream), the candidate's request is stopped and `InjectedEngineError` is raised;
- "abort": another caller aborts the request through vLLM's own `AsyncLLM.abort`, so the stream ends with
  finish_reason "abort" although the candidate's group never aborted it (as when an engine is paused with abort).

With `after_groups=k` instead, the "error" fires before the candidate's request is sent, once k groups of this
engine have finished (so a test can let other groups reach the trainer first).

`fault_report()` returns, at the moment the fault fired, how many tokens each candidate of the group had decoded and
which of them had a request in vLLM, so a test can show that siblings were running when it failed.
`use_agent(path)` swaps in a user's `AgentExecutor` file (what `--train.agent_func_path` loads) in place of upstream's
single-turn executor.
"""

import asyncio
import importlib.util

import ray

from openrlhf_darts import upstream
from openrlhf_darts.rollout import rollout_actor


class InjectedEngineError(RuntimeError):
    pass


class FaultInjectingRolloutActor(rollout_actor.DartsRolloutActor):
    async def __init__(self, *args, **kwargs):
        await super().__init__(*args, **kwargs)
        self._fault = None
        self._report = None
        self._upstream_executor = self.executor
        self._finished_groups = 0

    def arm(self, kind: str, group_id: int, candidate: int, after_tokens: int = 4, after_groups=None) -> None:
        if kind not in ("error", "abort") or (after_groups is not None and kind != "error"):
            raise ValueError(f"kind={kind!r} is not 'error' or 'abort' (after_groups needs 'error')")
        self._fault = {"kind": kind, "group_id": group_id, "candidate": candidate, "after_tokens": after_tokens}
        self._fault["after_groups"] = None if after_groups is None else self._finished_groups + after_groups
        self._report = None

    def disarm(self) -> None:
        self._fault = None

    def fault_report(self):
        return self._report

    def use_agent(self, path) -> None:
        """Run a user's `AgentExecutor` file from now on; None restores upstream's single-turn executor."""
        if path is None:
            self.executor = self._upstream_executor
            return
        spec = importlib.util.spec_from_file_location("darts_test_agent", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.executor = module.AgentExecutor()

    async def generate_group(self, *args, **kwargs):
        try:
            return await super().generate_group(*args, **kwargs)
        finally:
            self._finished_groups += 1

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        slot = rollout_actor._CANDIDATE.get()
        fault = self._fault
        if slot is None or fault is None or (slot[0].group_id, slot[1]) != (fault["group_id"], fault["candidate"]):
            return await super().generate(prompt_token_ids, sampling_params, multi_modal_data)
        group, index = slot
        self._fault = None  # fires once
        if fault["after_groups"] is not None:
            while self._finished_groups < fault["after_groups"]:
                await asyncio.sleep(0.002)
            self._report = {"kind": "error", "finished_groups": self._finished_groups}
            raise InjectedEngineError(
                f"injected engine error in candidate {index} of group {group.group_id}, before its request"
            )
        # The candidate's real request, in a child task of the candidate's own context.
        request = asyncio.ensure_future(super().generate(prompt_token_ids, sampling_params, multi_modal_data))
        while group.seen[index] < fault["after_tokens"] and not request.done():
            await asyncio.sleep(0.002)
        if request.done():
            raise RuntimeError(f"fault not injected: candidate {index} ended before {fault['after_tokens']} tokens")
        self._report = {
            "kind": fault["kind"],
            "seen": list(group.seen),
            "submitted": [rid is not None for rid in group.request_ids],
            "stopped": sorted(set(group.stop.finished) | set(group.stop.abort_limits)),
        }
        if fault["kind"] == "error":
            request.cancel()  # the engine drops the failed request (AsyncLLM aborts a cancelled stream)
            await asyncio.gather(request, return_exceptions=True)
            raise InjectedEngineError(
                f"injected engine error in candidate {index} of group {group.group_id} after "
                f"{group.seen[index]} tokens"
            )
        await upstream.engine_llm(self).abort(group.request_ids[index])
        return await request


FaultInjectingRolloutRayActor = ray.remote(FaultInjectingRolloutActor)
