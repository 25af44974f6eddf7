"""Tail batching on the engine: `generate_tail_group` / `abort_tail_groups` of the DARTS engine actor, on a real local
Ray cluster and a real vLLM CPU engine (tiny Qwen2), no mocks."""

import time

import pytest
from conftest import count_lines, stop_token_ids

from openrlhf_darts.core.types import GroupOutcome, GroupPlan

pytestmark = [pytest.mark.contract, pytest.mark.timeout(600)]

PROMPT = "the cat runs over the big dog"
N = 4


def _params(tokenizer, max_tokens=48, ignore_eos=False):
    from vllm import SamplingParams

    return SamplingParams(
        temperature=1.0,
        max_tokens=max_tokens,
        min_tokens=1,
        ignore_eos=ignore_eos,
        stop_token_ids=None if ignore_eos else stop_token_ids(tokenizer),
    )


def _launch(engine, tokenizer, group_id, params, num_samples=N):
    return engine.generate_tail_group.remote(
        group_id=group_id,
        prompt=PROMPT,
        label="",
        sampling_params=params,
        max_length=512,
        hf_tokenizer=tokenizer,
        num_samples=num_samples,
    )


def _length(response) -> int:
    start, end = response["action_ranges"][0]
    return end - start


def _wait_until_running(ray_cluster, engine, count, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while ray_cluster.get(engine.get_num_unfinished_requests.remote()) < count:
        assert time.monotonic() < deadline, f"fewer than {count} requests reached vLLM within {timeout_s} s"
        time.sleep(0.01)


def _wait_until_decoding(ray_cluster, engine, group_id, timeout_s=60.0):
    def _tokens_so_far(actor, group_id: int) -> int:
        # Runs inside the engine actor (__ray_call__; defined here so it ships by value): the group's decoded tokens
        # as its stream reported them, 0 until the actor has started the group.
        run = actor._tail_groups._runs.get(group_id) if actor._tail_groups is not None else None
        return 0 if run is None else sum(run.progress)

    deadline = time.monotonic() + timeout_s
    while ray_cluster.get(engine.__ray_call__.remote(_tokens_so_far, group_id)) == 0:
        assert time.monotonic() < deadline, f"group {group_id} decoded nothing within {timeout_s} s"
        time.sleep(0.01)


def test_a_group_that_completes_returns_upstreams_responses(ray_cluster, darts_engine, tokenizer, reward_log):
    calls_before = count_lines(reward_log)
    record = ray_cluster.get(_launch(darts_engine, tokenizer, 1, _params(tokenizer)))
    assert record["group_id"] == 1 and record["aborted"] is False
    responses = record["responses"]
    assert len(responses) == N
    assert set(responses[0]) >= {"observation_tokens", "action_ranges", "truncated", "reward", "scores"}
    # The engine-side counts agree with the responses themselves (the executor's action ranges, vLLM's finish reason).
    assert record["lengths"] == [_length(r) for r in responses]
    assert record["truncated"] == [bool(r["truncated"]) for r in responses]
    assert record["cut"] == [False] * N
    assert count_lines(reward_log) - calls_before == N  # every sample scored once
    assert ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0


def test_abort_stops_a_running_group_and_leaves_no_request(ray_cluster, darts_engine, tokenizer, reward_log):
    # 400 tokens without EOS: the tiny model takes seconds, so the group is certainly decoding when the abort lands.
    calls_before = count_lines(reward_log)
    ref = _launch(darts_engine, tokenizer, 2, _params(tokenizer, max_tokens=400, ignore_eos=True))
    _wait_until_decoding(ray_cluster, darts_engine, 2)
    assert ray_cluster.get(darts_engine.abort_tail_groups.remote([2])) == 1
    # abort_tail_groups returns only once every request of the group has left vLLM.
    assert ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0
    record = ray_cluster.get(ref)
    assert record["aborted"] is True and record["responses"] is None
    assert record["cut"] == [True] * N and record["truncated"] == [False] * N
    # Partial lengths, from vLLM's own final output of each aborted request: started, never at the cap.
    assert all(0 <= length < 400 for length in record["lengths"]), record["lengths"]
    assert sum(record["lengths"]) > 0
    assert count_lines(reward_log) == calls_before  # aborted samples are never scored


def test_aborting_a_group_that_already_returned_is_a_no_op(ray_cluster, darts_engine, tokenizer):
    short = _launch(darts_engine, tokenizer, 3, _params(tokenizer, max_tokens=2))
    long = _launch(darts_engine, tokenizer, 4, _params(tokenizer, max_tokens=400, ignore_eos=True))
    done = ray_cluster.get(short)
    _wait_until_running(ray_cluster, darts_engine, N)
    assert ray_cluster.get(darts_engine.abort_tail_groups.remote([3, 4])) == 1  # only group 4 was still running
    assert done["aborted"] is False and len(done["responses"]) == N
    assert ray_cluster.get(long)["aborted"] is True
    assert ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0


def test_abort_right_after_launch_leaves_no_request(ray_cluster, darts_engine, tokenizer):
    # The abort may land before some requests reach vLLM (cancelled there) or while vLLM adds them (aborted at their
    # first output): either way the group ends aborted and nothing keeps decoding.
    for group_id in range(10, 15):
        ref = _launch(darts_engine, tokenizer, group_id, _params(tokenizer, max_tokens=400, ignore_eos=True))
        ray_cluster.get(darts_engine.abort_tail_groups.remote([group_id]))
        record = ray_cluster.get(ref)
        assert record["aborted"] is True and record["responses"] is None
        assert ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0


def test_an_abort_that_overtakes_its_launch_aborts_the_group_when_it_starts(ray_cluster, darts_engine, tokenizer):
    # Ray starts an async actor's calls in any order, so the abort of a group can run before the call that launches
    # it. Forced here by aborting first: the launch then returns aborted without sending anything to vLLM.
    calls_before = ray_cluster.get(darts_engine.engine_finished_requests.remote())
    assert ray_cluster.get(darts_engine.abort_tail_groups.remote([30])) == 0  # nothing of group 30 is running
    record = ray_cluster.get(_launch(darts_engine, tokenizer, 30, _params(tokenizer, max_tokens=400, ignore_eos=True)))
    assert record["aborted"] is True and record["responses"] is None
    assert record["lengths"] == [0] * N and record["cut"] == [True] * N
    assert ray_cluster.get(darts_engine.engine_finished_requests.remote()) == calls_before  # vLLM ran none of it
    assert ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0
    # The abort of a group that already returned is ignored, not remembered as an early abort: a later launch under
    # the same id runs.
    done = ray_cluster.get(_launch(darts_engine, tokenizer, 31, _params(tokenizer, max_tokens=2)))
    assert ray_cluster.get(darts_engine.abort_tail_groups.remote([31])) == 0 and done["aborted"] is False
    again = ray_cluster.get(_launch(darts_engine, tokenizer, 31, _params(tokenizer, max_tokens=2)))
    assert again["aborted"] is False and len(again["responses"]) == N


def test_an_engine_error_fails_the_group_loudly(ray_cluster, darts_engine, tokenizer):
    # 600 new tokens in a 512-token budget: upstream's executor cuts the prompt to nothing and vLLM refuses the
    # request; every sample fails, and the group raises instead of returning.
    with pytest.raises(Exception, match="VLLMValidationError: The decoder prompt cannot be empty"):
        ray_cluster.get(_launch(darts_engine, tokenizer, 20, _params(tokenizer, max_tokens=600)))
    assert ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0


def test_darts_groups_and_upstream_calls_pass_through_the_wrapped_engine(ray_cluster, darts_engine, tokenizer):
    ray_cluster.get(_launch(darts_engine, tokenizer, 30, _params(tokenizer)))  # the engine is wrapped by now
    ray_cluster.get(darts_engine.pop_group_outcomes.remote())
    plan = GroupPlan(num_candidates=12, num_keep=2, num_long=0)
    kept = ray_cluster.get(
        darts_engine.generate_group.remote(
            prompt=PROMPT, label="", sampling_params=_params(tokenizer, max_tokens=200), max_length=512,
            hf_tokenizer=tokenizer, plan=plan, group_id=31,
        )
    )  # fmt: skip
    outcome = GroupOutcome.from_dict(ray_cluster.get(darts_engine.pop_group_outcomes.remote())[0]["outcome"])
    assert len(kept) == 2 and [_length(r) for r in kept] == list(outcome.kept_lengths)
    upstream = ray_cluster.get(
        darts_engine.generate_responses.remote(PROMPT, "", _params(tokenizer), 512, tokenizer, num_samples=3)
    )
    assert len(upstream) == 3
    assert ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0
