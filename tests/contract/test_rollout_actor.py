"""DartsRolloutActor on a real local Ray cluster and a real vLLM CPU engine (tiny Qwen2), no mocks."""

import pytest
from conftest import count_lines, stop_token_ids
from test_early_abort import _overshoot_bound

from openrlhf_darts.rollout.engine_counters import engine_counters
from openrlhf_darts.core.types import Decision, GroupOutcome, GroupPlan

pytestmark = [pytest.mark.contract, pytest.mark.timeout(600)]

PROMPT = "the cat runs over the big dog"


def _params(tokenizer, max_tokens=48):
    from vllm import SamplingParams

    return SamplingParams(
        temperature=1.0, max_tokens=max_tokens, min_tokens=1, stop_token_ids=stop_token_ids(tokenizer)
    )


def _run_group(ray_cluster, engine, tokenizer, plan, max_tokens=48, record=False, **extra):
    responses = ray_cluster.get(
        engine.generate_group.remote(
            prompt=PROMPT,
            label="",
            sampling_params=_params(tokenizer, max_tokens),
            max_length=512,
            hf_tokenizer=tokenizer,
            plan=plan,
            group_id=7,
            **extra,
        )
    )
    records = ray_cluster.get(engine.pop_group_outcomes.remote())
    assert [r["group_id"] for r in records] == [7]
    outcome = GroupOutcome.from_dict(records[0]["outcome"])
    return (responses, outcome, records[0]) if record else (responses, outcome)


def _response_length(response) -> int:
    start, end = response["action_ranges"][0]
    return end - start


def test_shortest_only_keeps_n_shortest_and_aborts_the_rest(ray_cluster, darts_engine, tokenizer, reward_log):
    plan = GroupPlan(num_candidates=12, num_keep=4, num_long=0)
    calls_before = count_lines(reward_log)
    responses, outcome, record = _run_group(ray_cluster, darts_engine, tokenizer, plan, record=True)

    assert len(responses) == plan.num_keep
    finished = [i for i in range(12) if not outcome.aborted[i]]
    valid = sorted((outcome.lengths[i], i) for i in finished if not outcome.truncated[i])
    # Precondition: at least n = 4 candidates stopped by themselves before the 48-token cap. The tiny model stops
    # about 4% a step, so each does with probability 1 - 0.96^48 = 0.86, and fewer than 4 of 12 has probability
    # about C(12,3) 0.86^3 0.14^9 = 3e-6.
    assert len(valid) >= plan.num_keep, (outcome.lengths, outcome.truncated)
    # The n shortest untruncated finished candidates, ties by index (spec 3(c)), and the responses handed back are
    # their sequences (lengths read from the responses themselves).
    expected = sorted(i for _, i in valid[: plan.num_keep])
    assert list(outcome.kept) == expected
    assert [_response_length(r) for r in responses] == [outcome.lengths[i] for i in expected]
    release = valid[plan.num_keep - 1]  # (length, index) of the n-th shortest: the final release bound
    for i in range(12):
        if outcome.aborted[i]:
            assert outcome.decisions[i] is Decision.ABORTED
            # Its partial length is a lower bound on its true length, so it could never have been kept.
            assert (outcome.lengths[i], i) > release, (i, outcome.lengths[i], release)
            # It decoded at most one engine step past the length from which it could no longer be kept, when each
            # of its stream outputs carried one step (test_early_abort._overshoot_bound explains the bound).
            limit, bound = record["abort_limits"][i], _overshoot_bound(record["largest_output"][i])
            assert limit <= outcome.lengths[i] <= limit + bound, (i, outcome.lengths[i], limit, bound)
    # Only kept samples were scored: one reward call each.
    assert count_lines(reward_log) - calls_before == plan.num_keep
    assert all(r["reward"] is not None for r in responses)
    assert ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0


def test_shortest_only_aborts_happen(ray_cluster, darts_engine, tokenizer):
    # 16 candidates, keep 2, cap 200 tokens: the 2nd shortest of 16 geometric(~4%) lengths is far below the cap, so
    # the group must stop early and abort most candidates. Aborted tokens are the waste the outcome reports.
    plan = GroupPlan(num_candidates=16, num_keep=2, num_long=0)
    before = engine_counters(darts_engine)
    responses, outcome = _run_group(ray_cluster, darts_engine, tokenizer, plan, max_tokens=200)
    after = engine_counters(darts_engine)
    assert outcome.num_aborted >= 1
    # Token accounting against data the outcome did not compute: vLLM's own count of the tokens it generated for
    # the group (aborted candidates up to their abort), the kept responses' own lengths, and the engine's lengths
    # of the candidates not kept.
    assert outcome.tokens_generated == after["generation_tokens"] - before["generation_tokens"]
    assert outcome.tokens_kept == sum(_response_length(r) for r in responses)
    assert outcome.tokens_wasted == sum(outcome.lengths[j] for j in range(16) if j not in outcome.kept)
    # vLLM finished only the candidates that stopped by themselves; the aborted ones it never counts as finished.
    finished = sum(after.get(k, 0) - before.get(k, 0) for k in ("finished_stop", "finished_length"))
    assert finished == 16 - outcome.num_aborted
    assert ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0


def test_dual_end_keeps_k_shortest_and_l_longest(ray_cluster, darts_engine, tokenizer, reward_log):
    plan = GroupPlan(num_candidates=10, num_keep=6, num_long=2)
    calls_before = count_lines(reward_log)
    responses, outcome = _run_group(ray_cluster, darts_engine, tokenizer, plan, max_tokens=128)
    assert len(responses) == 6
    assert outcome.num_aborted == 0  # dual-end groups run every candidate to the end
    valid = sorted((outcome.lengths[j], j) for j in range(10) if not outcome.truncated[j])
    # Precondition: at least K + L = 6 untruncated candidates. Each stops before the 128-token cap with probability
    # 1 - 0.96^128 = 0.995, so fewer than 6 of 10 has probability about C(10,5) 0.005^5 = 8e-10.
    assert len(valid) >= 6, (outcome.lengths, outcome.truncated)
    # K = 4 shortest and L = 2 longest untruncated by (length, index), disjoint since there are at least 6 (spec
    # 3(b)); no kept candidate is truncated. The responses are those candidates' sequences.
    expected = sorted([j for _, j in valid[:4]] + [j for _, j in valid[-2:]])
    assert list(outcome.kept) == expected, (outcome.lengths, outcome.truncated)
    assert [_response_length(r) for r in responses] == [outcome.lengths[j] for j in expected]
    assert count_lines(reward_log) - calls_before == 6


def test_long_end_keeps_truncated_candidates_as_the_long_end(ray_cluster, darts_engine, tokenizer, reward_log):
    # --darts.truncated long_end: capped candidates rank longest. With a 20-token cap the tiny model (stops ~4% a
    # step) runs into the cap in about 0.96^20 = 44% of candidates; of 24 candidates, at least 2 are truncated and at
    # least 4 valid in all but ~2e-5 of runs (binomial tails), which the precondition below asserts.
    plan = GroupPlan(num_candidates=24, num_keep=6, num_long=2)
    calls_before = count_lines(reward_log)
    responses, outcome = _run_group(
        ray_cluster, darts_engine, tokenizer, plan, max_tokens=20, truncated_rule="long_end"
    )
    truncated = [j for j in range(24) if outcome.truncated[j]]
    valid = sorted((outcome.lengths[j], j) for j in range(24) if not outcome.truncated[j])
    # Precondition: at least L = 2 truncated and K = 4 valid candidates.
    assert len(truncated) >= 2 and len(valid) >= 4, (outcome.lengths, outcome.truncated)
    assert outcome.truncated_rule == "long_end" and outcome.num_aborted == 0
    # L = 2 longest by (truncated, length, index): the two truncated of highest index; K = 4 shortest valid.
    expected = sorted(truncated[-2:] + [j for _, j in valid[:4]])
    assert list(outcome.kept) == expected, (outcome.lengths, outcome.truncated)
    assert [_response_length(r) for r in responses] == list(outcome.kept_lengths)
    assert all(r["truncated"] for r, j in zip(responses, outcome.kept) if outcome.truncated[j])
    assert count_lines(reward_log) - calls_before == 6


def test_outcome_records_the_cap_upstream_computed(ray_cluster, darts_engine, tokenizer):
    # With max_new_tokens None (sampling_params.max_tokens None), upstream's executor caps each request at
    # max_length - prompt tokens. Computed here from the tokenizer, and checked against where the executor put the
    # prompt/response boundary in its own responses.
    from vllm import SamplingParams

    prompt_tokens = len(tokenizer(PROMPT, add_special_tokens=False)["input_ids"])
    max_length = prompt_tokens + 14
    params = SamplingParams(temperature=1.0, max_tokens=None, min_tokens=1, stop_token_ids=stop_token_ids(tokenizer))
    responses = ray_cluster.get(
        darts_engine.generate_group.remote(
            prompt=PROMPT, label="", sampling_params=params, max_length=max_length, hf_tokenizer=tokenizer,
            plan=GroupPlan(16, 4, 1), group_id=8,
        )
    )  # fmt: skip
    (record,) = ray_cluster.get(darts_engine.pop_group_outcomes.remote())
    outcome = GroupOutcome.from_dict(record["outcome"])
    assert all(r["action_ranges"][0][0] == prompt_tokens for r in responses)
    assert outcome.max_tokens == max_length - prompt_tokens == 14
    # The tiny model stops about 4% a step, so about 0.96^14 = 56% of 16 candidates run into the cap (none of them:
    # 0.44^16 = 2e-6), and the engine cut them exactly at the recorded cap.
    truncated = [outcome.lengths[j] for j in range(16) if outcome.truncated[j]]
    assert truncated and set(truncated) == {14}, (outcome.lengths, outcome.truncated)
    # An explicit max_new_tokens is the cap as given.
    _, explicit = _run_group(ray_cluster, darts_engine, tokenizer, GroupPlan(4, 2, 1), max_tokens=9)
    assert explicit.max_tokens == 9


def test_unknown_truncated_rule_is_rejected(ray_cluster, darts_engine, tokenizer):
    with pytest.raises(ValueError, match=r"truncated_rule='longest' is not one of \('exclude', 'long_end'\)"):
        _run_group(ray_cluster, darts_engine, tokenizer, GroupPlan.uniform(2), truncated_rule="longest")


def test_pass_through_plan_keeps_every_candidate(ray_cluster, darts_engine, tokenizer):
    plan = GroupPlan.uniform(4)
    responses, outcome = _run_group(ray_cluster, darts_engine, tokenizer, plan)
    assert list(outcome.kept) == [0, 1, 2, 3] and outcome.tokens_wasted == 0
    assert len(responses) == 4


def test_invalid_plan_is_rejected_before_generation(ray_cluster, darts_engine, tokenizer, reward_log):
    calls_before = count_lines(reward_log)
    with pytest.raises(ValueError, match="num_keep=4 exceeds num_candidates=3"):
        ray_cluster.get(
            darts_engine.generate_group.remote(
                prompt=PROMPT,
                label="",
                sampling_params=_params(tokenizer),
                max_length=512,
                hf_tokenizer=tokenizer,
                plan={"num_candidates": 3, "num_keep": 4, "num_long": 0},
            )
        )
    assert count_lines(reward_log) == calls_before
    assert ray_cluster.get(darts_engine.pop_group_outcomes.remote()) == []


def test_upstream_generate_responses_is_untouched(ray_cluster, darts_engine, tokenizer):
    # Evaluation and upstream callers go through generate_responses: n samples, upstream's dict, no outcome recorded.
    responses = ray_cluster.get(
        darts_engine.generate_responses.remote(
            prompt=PROMPT,
            label="",
            sampling_params=_params(tokenizer),
            max_length=512,
            hf_tokenizer=tokenizer,
            num_samples=3,
        )
    )
    assert len(responses) == 3
    assert set(responses[0]) >= {"observation_tokens", "action_ranges", "truncated", "reward", "scores", "extra_logs"}
    assert ray_cluster.get(darts_engine.pop_group_outcomes.remote()) == []


def _drain_parts(ray_cluster, engine, ref, group_id):
    """Poll the engine's outbox while the group runs: (parts, whether the group had ended when each part was seen)."""
    import time

    parts = []
    while True:
        done = bool(ray_cluster.wait([ref], timeout=0)[0])
        box = ray_cluster.get(engine.pop_stream_outbox.remote())
        parts += [(part, done) for part in box["parts"]]
        if done:
            return parts
        time.sleep(0.02)


def test_early_release_hands_out_the_short_end_before_the_long_end(ray_cluster, darts_engine, tokenizer, reward_log):
    # Dual-end (10 candidates, keep 6, long 2): K = 4. Cap 200: the longest of 10 candidates stopping ~4% a step
    # outlives the 4th shortest by ~40 decode steps on average; the precondition below asserts it happened.
    plan = GroupPlan(num_candidates=10, num_keep=6, num_long=2)
    calls_before = count_lines(reward_log)
    ref = darts_engine.generate_group.remote(
        prompt=PROMPT, label="", sampling_params=_params(tokenizer, 200), max_length=512, hf_tokenizer=tokenizer,
        plan=plan, group_id=11, early_release=True,
    )  # fmt: skip
    parts = _drain_parts(ray_cluster, darts_engine, ref, 11)
    assert ray_cluster.get(ref) == []  # every kept response left through the outbox
    (record,) = ray_cluster.get(darts_engine.pop_group_outcomes.remote())
    outcome = GroupOutcome.from_dict(record["outcome"])
    (short, short_done), (rest, _) = parts
    # Precondition: the short end was out while the group still ran.
    assert not short_done and record["early_s"] < outcome.elapsed_s, (record["early_s"], outcome.elapsed_s)
    valid = sorted((outcome.lengths[j], j) for j in range(10) if not outcome.truncated[j])
    assert len(valid) >= 4
    # The short end: the K = 4 shortest valid candidates (ties by index), ascending, scored, with their own lengths.
    assert short["group_id"] == 11 and short["candidates"] == sorted(j for _, j in valid[:4])
    assert [_response_length(r) for r in short["responses"]] == [outcome.lengths[j] for j in short["candidates"]]
    assert all(r["reward"] is not None for r in short["responses"])
    # The rest when the group ended; together exactly the kept set, and only kept candidates were scored.
    assert sorted(short["candidates"] + rest["candidates"]) == list(outcome.kept)
    assert record["early"] == short["candidates"]
    assert count_lines(reward_log) - calls_before == 6
    assert ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0


def test_early_release_of_a_shortest_only_group_is_its_whole_kept_set(ray_cluster, darts_engine, tokenizer):
    plan = GroupPlan(num_candidates=12, num_keep=4, num_long=0)
    ref = darts_engine.generate_group.remote(
        prompt=PROMPT, label="", sampling_params=_params(tokenizer, 200), max_length=512, hf_tokenizer=tokenizer,
        plan=plan, group_id=12, early_release=True,
    )  # fmt: skip
    parts = _drain_parts(ray_cluster, darts_engine, ref, 12)
    assert ray_cluster.get(ref) == []
    (record,) = ray_cluster.get(darts_engine.pop_group_outcomes.remote())
    ((part, _),) = parts
    assert part["candidates"] == list(GroupOutcome.from_dict(record["outcome"]).kept) == record["early"]
    with pytest.raises(ValueError, match="early_release=True needs a group_id"):
        ray_cluster.get(
            darts_engine.generate_group.remote(
                prompt=PROMPT, label="", sampling_params=_params(tokenizer), max_length=512, hf_tokenizer=tokenizer,
                plan=plan, early_release=True,
            )  # fmt: skip
        )
