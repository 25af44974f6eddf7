"""`TailBatchingSamplesGenerator` on one real vLLM CPU engine (tiny Qwen2 that stops at varied lengths), no mocks.

What the arm promises (trainer/tail_batching.py): exactly B groups reach training, n samples each and contiguous; the
aborted prompts come back at the front of the next step; no request is left in vLLM after a step, failed or not;
every prompt of an epoch is trained once (defer) or trained / dropped / filtered once; dynamic filtering replaces
filtered groups, which never count towards B. The dataloader yields one prompt per batch, as upstream's does.
"""

from types import SimpleNamespace

import pytest
from conftest import prompt_batches, rollout_args

from openrlhf_darts.tail_batching import TailBatchingConfig

pytestmark = [pytest.mark.contract, pytest.mark.timeout(600)]

N = 4
KWARGS = dict(temperature=1.0, top_p=1.0, max_new_tokens=40, max_len=512)


def _generator(engine, tokenizer, prompts, batch_size, tail, dynamic_filtering=False, filter_range=(0.0, 1.0)):
    from openrlhf_darts.trainer.tail_batching import TailBatchingSamplesGenerator

    args = rollout_args(
        n=N,
        batch_size=batch_size,
        dynamic_filtering=dynamic_filtering,
        darts={"enable": False},
        tail_batching={"enable": True, **tail},
    )
    args.algo.dynamic_filtering_range = list(filter_range)
    config = TailBatchingConfig.from_args(args)
    strategy = SimpleNamespace(args=args)
    return TailBatchingSamplesGenerator(strategy, prompt_batches(prompts, 1), None, tokenizer, [engine], config)


def _groups(samples) -> list[str]:
    """The prompt of each group, in order; asserts n samples per group, contiguous."""
    assert len(samples) % N == 0
    groups = [samples[i : i + N] for i in range(0, len(samples), N)]
    for group in groups:
        assert len({s.prompts[0] for s in group}) == 1, "a group's samples are not contiguous"
    return [group[0].prompts[0] for group in groups]


def _unfinished(ray_cluster, engine) -> int:
    return ray_cluster.get(engine.get_num_unfinished_requests.remote())


def test_exactly_b_groups_train_and_the_aborted_prompts_come_back_next_step(ray_cluster, darts_engine, tokenizer):
    prompts = [f"the dog jumps over {i} red cats" for i in range(16)]
    # B = 4, r = 2: 8 prompts launched per step, 4 trained, 4 aborted and deferred; deferred once -> pinned next time.
    generator = _generator(darts_engine, tokenizer, prompts, 4, {"launch_ratio": 2.0, "max_deferrals": 1})

    samples, pass_rate, consumed, exhausted = generator.generate_samples(**KWARGS)
    trained = _groups(samples)
    assert (len(trained), len(set(trained)), consumed, exhausted, pass_rate) == (4, 4, 8, False, None)
    assert set(trained) <= set(prompts[:8])
    deferred = [p.prompt for p in generator.queue.items()]
    # The other 4 launched prompts wait, in launch order, each deferred once.
    assert deferred == [p for p in prompts[:8] if p not in trained]
    assert [p.deferrals for p in generator.queue.items()] == [1] * 4
    assert _unfinished(ray_cluster, darts_engine) == 0
    metrics = generator.pop_metrics()
    assert metrics["tail_batching/prompts_launched"] == 8 and metrics["tail_batching/prompts_trained"] == 4
    assert metrics["tail_batching/prompts_aborted"] == metrics["tail_batching/prompts_deferred"] == 4
    assert metrics["tail_batching/queue_size"] == 4 and metrics["tail_batching/prompts_dropped"] == 0
    # Kept tokens are the trained samples' response lengths, as upstream's Experiences count them.
    assert metrics["tail_batching/tokens_kept"] == sum(float(s.response_length.sum()) for s in samples)
    assert metrics["tail_batching/wasted_tokens"] > 0  # 4 groups of 4 were generating when aborted
    assert metrics["tail_batching/tokens_generated"] == (
        metrics["tail_batching/tokens_kept"] + metrics["tail_batching/wasted_tokens"]
    )  # nothing filtered in this step

    # Step 2 launches the 4 deferred prompts first (pinned: deferred max_deferrals = 1 time), then 4 fresh ones.
    samples, _, consumed, exhausted = generator.generate_samples(**KWARGS)
    assert consumed == 4 and not exhausted  # only 8 - 4 fresh prompts drawn from the dataloader
    assert sorted(_groups(samples)) == sorted(deferred)  # the pinned prompts took all 4 slots
    assert [p.prompt for p in generator.queue.items()] == prompts[8:12]  # the 4 fresh ones wait now
    metrics = generator.pop_metrics()
    assert (metrics["tail_batching/prompts_resumed"], metrics["tail_batching/prompts_pinned"]) == (4, 4)
    assert _unfinished(ray_cluster, darts_engine) == 0


@pytest.mark.parametrize("max_deferrals", [None, 1])
def test_every_prompt_of_an_epoch_is_trained_exactly_once(ray_cluster, darts_engine, tokenizer, max_deferrals):
    prompts = [f"a small bird sings {i} songs" for i in range(10)]
    # B = 3, r = 1.5: 5 launched per step. By hand (deferred first, then fresh): step 1 launches 5 fresh, step 2 the
    # 2 deferred + 3 fresh, step 3 the 2 deferred + the last 2 fresh (the dataloader runs out: 4 launched, 3 trained),
    # step 4 the last deferred prompt alone (1 launched, nothing aborted). 3 + 3 + 3 + 1 = 10, exhausted after step 4.
    generator = _generator(darts_engine, tokenizer, prompts, 3, {"launch_ratio": 1.5, "max_deferrals": max_deferrals})
    trained, consumed, steps = [], 0, []
    while True:
        samples, _, used, exhausted = generator.generate_samples(**KWARGS)
        trained += _groups(samples)
        consumed += used
        steps.append(len(samples) // N)
        assert _unfinished(ray_cluster, darts_engine) == 0
        if exhausted:
            break
        assert len(steps) < 10, "the epoch did not end"
    assert sorted(trained) == sorted(prompts)  # each once: none skipped, none twice
    assert consumed == 10 and len(generator.queue) == 0
    assert steps == [3, 3, 3, 1]
    # The next call starts a new epoch from the dataloader's beginning.
    samples, _, used, _ = generator.generate_samples(**KWARGS)
    assert used == 5 and set(_groups(samples)) <= set(prompts[:5])
    generator.queue.take(len(generator.queue))


def test_drop_mode_trains_b_and_drops_the_rest(ray_cluster, darts_engine, tokenizer):
    prompts = [f"the red fox sees {i} green frogs" for i in range(8)]
    generator = _generator(darts_engine, tokenizer, prompts, 2, {"launch_ratio": 2.0, "aborted_prompts": "drop"})
    trained, dropped = [], 0
    for step in range(2):  # 4 launched per step: 2 trained, 2 dropped
        samples, _, consumed, exhausted = generator.generate_samples(**KWARGS)
        groups = _groups(samples)
        assert (len(groups), consumed, exhausted) == (2, 4, False)
        assert set(groups) <= set(prompts[4 * step : 4 * step + 4])
        trained += groups
        metrics = generator.pop_metrics()
        assert metrics["tail_batching/prompts_dropped"] == 2 and metrics["tail_batching/prompts_deferred"] == 0
        dropped += metrics["tail_batching/prompts_dropped"]
        assert len(generator.queue) == 0
    assert len(set(trained)) == 4 and dropped == 4  # 4 trained + 4 dropped = the 8 prompts
    # The dataloader is drained exactly at a step boundary: the next call launches nothing and ends the epoch.
    samples, _, consumed, exhausted = generator.generate_samples(**KWARGS)
    assert (samples, consumed, exhausted) == ([], 0, True)
    assert _unfinished(ray_cluster, darts_engine) == 0


def test_dynamic_filtering_replaces_filtered_groups_which_never_count(ray_cluster, darts_engine, tokenizer):
    # The test reward is 1.0 for an even number of characters: with range (0.3, 1.0) a group of 4 passes only with
    # 2 or 3 of its 4 rewards at 1 (mean 0.5 or 0.75), so about 6 in 16 groups are filtered.
    prompts = [f"one tall tree has {i} leaves" for i in range(24)]
    generator = _generator(
        darts_engine, tokenizer, prompts, 2, {"launch_ratio": 1.5}, dynamic_filtering=True, filter_range=(0.3, 1.0)
    )
    trained, filtered, consumed = [], 0, 0
    while True:
        samples, pass_rate, used, exhausted = generator.generate_samples(**KWARGS)
        groups = _groups(samples)
        for i in range(len(groups)):
            mean = sum(float(s.scores[0]) for s in samples[i * N : (i + 1) * N]) / N
            assert 0.3 < mean < 1.0, mean  # only groups strictly inside the range train
        metrics = generator.pop_metrics()
        assert metrics["tail_batching/prompts_trained"] == len(groups) <= 2
        if not exhausted:
            assert len(groups) == 2  # filtered groups were replaced until B passed
        trained += groups
        filtered += metrics.get("tail_batching/prompts_filtered", 0)
        consumed += used
        assert _unfinished(ray_cluster, darts_engine) == 0
        if exhausted:
            break
    assert filtered >= 1  # precondition: the filter did drop groups (P(none) ~ (10/16)^16 < 1e-3)
    # Every prompt of the epoch was drawn once and ended trained or filtered (deferred ones came back).
    assert consumed == 24 and len(trained) == len(set(trained))
    assert len(trained) + filtered == 24


def test_a_failing_step_raises_and_leaves_no_request(ray_cluster, darts_engine, tokenizer):
    prompts = [f"the old cat naps {i} times" for i in range(4)]
    generator = _generator(darts_engine, tokenizer, prompts, 2, {"launch_ratio": 2.0})
    # 600 new tokens in a 512-token budget: the executor leaves an empty prompt, vLLM refuses every request.
    with pytest.raises(Exception, match="The decoder prompt cannot be empty"):
        generator.generate_samples(**dict(KWARGS, max_new_tokens=600))
    assert _unfinished(ray_cluster, darts_engine) == 0
