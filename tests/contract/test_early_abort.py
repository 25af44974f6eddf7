"""Per-candidate early abort (DARTS_SPEC.md §3(c), issue 11 item 2) on a real vLLM CPU engine that queues siblings.

The session engine admits every candidate at once, so siblings decode in lockstep there. This module starts a second
engine through OpenRLHF's `create_vllm_engines` whose scheduler admits only `MAX_NUM_SEQS` requests at a time
(`OPENRLHF_DARTS_CPU_MAX_NUM_SEQS`, read by the actor module at import in its own worker process), and runs several
shortest-only groups of 16 candidates on it at once, so most siblings wait in vLLM's queue with 0 tokens while the
others decode. Checked against the engine's own outputs:

- the kept responses are the n shortest untruncated candidates by (length, index) among the completed ones, and no
  aborted candidate could have displaced one of them (its partial length is a lower bound on its true length);
- every aborted candidate decoded at most one engine step beyond the length at which it could no longer be kept,
  when each of its stream outputs carried one step (see `_overshoot_bound`);
- no request is left in the engine.

`python -m pytest tests/contract/test_early_abort.py -s` prints the workload's token figures (the issue's closing
note compares them before and after per-candidate abort).
"""

import time

import pytest
from conftest import stop_token_ids

from openrlhf_darts.core.selection import select_dual_end
from openrlhf_darts.core.types import GroupOutcome, GroupPlan

pytestmark = [pytest.mark.contract, pytest.mark.timeout(900)]

MAX_NUM_SEQS = 4
PLAN = GroupPlan(num_candidates=16, num_keep=4, num_long=0)
GROUPS = 6
MAX_TOKENS = 96
PROMPTS = [f"the {word} runs over the big dog" for word in ("cat", "fox", "hen", "cow", "pig", "owl", "ant", "bee")]


@pytest.fixture(scope="module")
def queued_engine(ray_cluster, stopping_model_path):
    """A second DARTS engine that admits MAX_NUM_SEQS requests at a time; removed with its placement group after."""
    import ray
    from ray.util import placement_group_table, remove_placement_group
    from ray.util.placement_group import PlacementGroup

    from openrlhf_darts import upstream
    from openrlhf_darts.rollout.rollout_actor import DartsRolloutActor

    env = {"env_vars": {"OPENRLHF_DARTS_CPU_MAX_NUM_SEQS": str(MAX_NUM_SEQS)}}
    before = set(placement_group_table())
    with upstream.rollout_actor_class(ray.remote(runtime_env=env)(DartsRolloutActor)):
        engines = upstream.create_vllm_engines(1, 1, stopping_model_path, 0, False, True, True, 512, None, 0.15, False)
    engine = engines[0]
    limit = ray.get(engine.__ray_call__.remote(lambda actor: actor.llm.vllm_config.scheduler_config.max_num_seqs))
    assert limit == MAX_NUM_SEQS  # precondition: siblings of a 16-candidate group must queue
    yield engine
    ray.kill(engine)
    for pg_id in set(placement_group_table()) - before:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg_id)))


def _params(tokenizer, max_tokens=MAX_TOKENS):
    from vllm import SamplingParams

    return SamplingParams(
        temperature=1.0, max_tokens=max_tokens, min_tokens=1, stop_token_ids=stop_token_ids(tokenizer)
    )


def _run_groups(ray_cluster, engine, tokenizer, max_tokens=MAX_TOKENS, **extra):
    """GROUPS shortest-only groups dispatched at once; (responses per group, outcome records by group id)."""
    refs = [
        engine.generate_group.remote(
            prompt=PROMPTS[g % len(PROMPTS)],
            label="",
            sampling_params=_params(tokenizer, max_tokens),
            max_length=512,
            hf_tokenizer=tokenizer,
            plan=PLAN,
            group_id=g,
            **extra,
        )
        for g in range(GROUPS)
    ]
    responses = ray_cluster.get(refs)
    records = {r["group_id"]: r for r in ray_cluster.get(engine.pop_group_outcomes.remote())}
    assert sorted(records) == list(range(GROUPS))
    return responses, records


def _overshoot_bound(largest_output: int) -> int:
    """Most tokens an aborted candidate can decode past its abort limit, given the most tokens one of its outputs added.

    The engine emits one token per running request per step, and vLLM's front end merges steps into one output only
    when the consumer falls behind; `largest_output` = k is the most it merged for this candidate. The output that
    crossed the bound can carry k - 1 tokens past it, and the abort, applied by the front end one event-loop turn
    later, can let one more output of up to k tokens through: 2k - 1, which is one engine step when k = 1.
    """
    return max(0, 2 * largest_output - 1)


def _response_length(response) -> int:
    start, end = response["action_ranges"][0]
    return end - start


def _figures(outcomes: list[GroupOutcome]) -> dict[str, int]:
    aborted = [o.lengths[j] for o in outcomes for j in range(o.plan.num_candidates) if o.aborted[j]]
    return {
        "groups": len(outcomes),
        "candidates": sum(o.plan.num_candidates for o in outcomes),
        "tokens_generated": sum(o.tokens_generated for o in outcomes),
        "tokens_kept": sum(o.tokens_kept for o in outcomes),
        "tokens_wasted": sum(o.tokens_wasted for o in outcomes),
        "aborted": len(aborted),
        "aborted_tokens": sum(aborted),
    }


def test_queued_siblings_do_not_keep_the_others_decoding(ray_cluster, queued_engine, tokenizer):
    start = time.perf_counter()
    responses, records = _run_groups(ray_cluster, queued_engine, tokenizer)
    seconds = time.perf_counter() - start
    outcomes = [GroupOutcome.from_dict(records[g]["outcome"]) for g in range(GROUPS)]
    overshoot = [
        o.lengths[j] - records[g]["abort_limits"][j]
        for g, o in enumerate(outcomes)
        for j in range(PLAN.num_candidates)
        if o.aborted[j]
    ]
    print(f"\n[early abort] max_num_seqs={MAX_NUM_SEQS} plan={PLAN} groups={GROUPS} max_tokens={MAX_TOKENS}")
    print(f"[early abort] {_figures(outcomes)} rollout_s={seconds:.1f}")
    print(
        f"[early abort] overshoot (partial - limit) of aborted candidates: {sorted(overshoot)}; raced="
        f"{sum(len(r['raced']) for r in records.values())} abort_resent={sum(r['abort_resent'] for r in records.values())} "
        f"largest stream output (tokens) of aborted candidates: "
        f"{max(records[g]['largest_output'][j] for g, o in enumerate(outcomes) for j in range(16) if o.aborted[j])}"
    )
    for g, outcome in enumerate(outcomes):
        print(f"[early abort] group {g}: lengths={list(outcome.lengths)} aborted={[int(a) for a in outcome.aborted]}")

    for group_responses, outcome, record in zip(responses, outcomes, (records[g] for g in range(GROUPS))):
        completed = [j for j in range(PLAN.num_candidates) if not outcome.aborted[j]]
        valid = sorted((outcome.lengths[j], j) for j in completed if not outcome.truncated[j])
        assert len(valid) >= PLAN.num_keep  # precondition: 96 tokens is far above the 4th shortest of 16
        expected = sorted(j for _, j in valid[: PLAN.num_keep])
        # Offline selection over the completed lengths, computed here from the engine's lengths, not taken from
        # the outcome: the n shortest untruncated by (length, index).
        completed_lengths = [outcome.lengths[j] for j in completed]
        completed_truncated = [outcome.truncated[j] for j in completed]
        offline = [completed[p] for p in select_dual_end(completed_lengths, completed_truncated, PLAN.num_keep, 0)]
        assert list(outcome.kept) == expected == offline
        # The responses handed back are those candidates' sequences (lengths from the samples themselves).
        assert [_response_length(r) for r in group_responses] == [outcome.lengths[j] for j in expected]
        release = valid[PLAN.num_keep - 1]  # (length, index) of the n-th shortest: the final release bound
        limits = record["abort_limits"]
        for j in range(PLAN.num_candidates):
            if not outcome.aborted[j]:
                continue
            # A partial length is a lower bound on the true length, so this candidate could never have been kept.
            assert (outcome.lengths[j], j) > release, (j, outcome.lengths[j], release)
            bound = _overshoot_bound(record["largest_output"][j])
            assert limits[j] is not None and limits[j] <= outcome.lengths[j] <= limits[j] + bound, (
                j,
                outcome.lengths[j],
                limits[j],
                bound,
            )
    # Siblings queued: more candidates were in flight than the engine admits, and aborts still happened early.
    assert sum(o.num_aborted for o in outcomes) >= GROUPS
    assert ray_cluster.get(queued_engine.get_num_unfinished_requests.remote()) == 0


def test_long_end_keeps_the_first_n_to_stop(ray_cluster, queued_engine, tokenizer):
    """--darts.truncated long_end (the reference code): a shortest-only group releases after n candidates stopped for
    any reason, truncated ones included, and keeps those n; with queued siblings they need not be the n shortest."""
    responses, records = _run_groups(ray_cluster, queued_engine, tokenizer, max_tokens=24, truncated_rule="long_end")
    maybe_shorter = 0
    for g in range(GROUPS):
        outcome, order = GroupOutcome.from_dict(records[g]["outcome"]), records[g]["stop_order"]
        assert outcome.truncated_rule == "long_end"
        assert list(outcome.kept) == sorted(order[: PLAN.num_keep])  # the first n the engine saw stop
        for j in range(PLAN.num_candidates):
            # Everyone else was aborted, or stopped by itself after the release while its abort was in flight.
            assert j in outcome.kept or outcome.aborted[j] or order.index(j) >= PLAN.num_keep
        assert [_response_length(r) for r in responses[g]] == list(outcome.kept_lengths)
        # An aborted candidate cut below the longest kept length might have finished shorter: the first n to stop
        # are not necessarily the n shortest.
        cut = [outcome.lengths[j] for j in range(PLAN.num_candidates) if outcome.aborted[j]]
        maybe_shorter += bool(cut) and min(cut) < max(outcome.kept_lengths)
    kept_truncated = sum(o["outcome"]["truncated"][j] for o in records.values() for j in o["outcome"]["kept"])
    print(f"\n[long_end] groups with an aborted candidate cut below their longest kept length: {maybe_shorter}")
    print(f"[long_end] kept truncated samples: {kept_truncated} of {GROUPS * PLAN.num_keep}")
    assert ray_cluster.get(queued_engine.get_num_unfinished_requests.remote()) == 0
