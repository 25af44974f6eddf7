"""DartsSamplesGenerator against upstream's SamplesGenerator on one real engine: counts, fields, contiguity."""

import pytest
from conftest import prompt_batches, rollout_args

from openrlhf_darts.rollout.engine_counters import engine_counters
from openrlhf_darts.config import DartsConfig

pytestmark = [pytest.mark.contract, pytest.mark.timeout(600)]

PROMPTS = [f"the dog jumps over {i} red cats" for i in range(6)]


def _generate(generator_cls, engine, tokenizer, args, *extra, temperature=1.0):
    from types import SimpleNamespace

    strategy = SimpleNamespace(args=args)
    batches = prompt_batches(PROMPTS, args.rollout.batch_size)
    generator = generator_cls(strategy, batches, None, tokenizer, [engine], *extra)
    kwargs = dict(temperature=temperature, top_p=1.0, max_new_tokens=40, max_len=512)
    return generator, generator.generate_samples(**kwargs)


def test_darts_returns_exactly_n_per_prompt_contiguous(ray_cluster, darts_engine, tokenizer):
    from openrlhf_darts.trainer.samples_generator import DartsSamplesGenerator

    args = rollout_args(n=4, batch_size=6, darts={"enable": True, "selection": "dual_end", "num_long": 1})
    config = DartsConfig.from_args(args)
    before = engine_counters(darts_engine)["generation_tokens"]
    generator, (samples, _, consumed, _) = _generate(DartsSamplesGenerator, darts_engine, tokenizer, args, config)
    generated = engine_counters(darts_engine)["generation_tokens"] - before
    assert consumed == 6 and len(samples) == 6 * 4
    # Groups stay contiguous: every run of 4 samples shares one prompt, and every prompt appears once.
    groups = [samples[i : i + 4] for i in range(0, len(samples), 4)]
    assert sorted(g[0].prompts[0] for g in groups) == sorted(PROMPTS)
    assert all(len({s.prompts[0] for s in g}) == 1 for g in groups)
    metrics = generator.pop_metrics()
    # Default budget: avg 1.25n = 5 candidates per prompt, 6 prompts -> 30 (spec 3(e) fixed mode).
    assert metrics["darts/budget"] == 30
    assert metrics["darts/candidates_mean"] == 5.0
    # Tokens against data the outcomes did not compute: vLLM's own count of the tokens it generated in the step,
    # and the response lengths of the samples upstream's experience builder made.
    assert metrics["darts/tokens_generated"] == generated
    assert metrics["darts/tokens_kept"] == sum(s.response_length.item() for s in samples) > 0
    assert len(generator.last_outcomes) == 6
    assert ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0


def test_darts_off_equals_upstream_tensor_by_tensor(ray_cluster, darts_engine, tokenizer):
    import torch

    from openrlhf_darts import upstream
    from openrlhf_darts.trainer.samples_generator import DartsSamplesGenerator

    # Greedy decoding (temperature 0), so both generators must produce the same sequences for the same prompt; the
    # samples come back in completion order, so they are compared per prompt (n = 3 identical samples each).
    args = rollout_args(n=3, batch_size=3, darts={})
    config = DartsConfig.from_args(args)
    assert not config.enable
    _, (ours, *rest_a) = _generate(DartsSamplesGenerator, darts_engine, tokenizer, args, config, temperature=0.0)
    _, (theirs, *rest_b) = _generate(upstream.SamplesGenerator, darts_engine, tokenizer, args, temperature=0.0)
    assert (len(ours), *rest_a) == (len(theirs), *rest_b) == (9, None, 3, False)
    assert ray_cluster.get(darts_engine.pop_group_outcomes.remote()) == []  # DARTS off: no group ran
    by_prompt = lambda samples: sorted(samples, key=lambda e: (e.prompts[0], e.sequences.tolist()))  # noqa: E731
    for a, b in zip(by_prompt(ours), by_prompt(theirs)):
        assert (a.prompts, a.labels) == (b.prompts, b.labels)
        for field in ("sequences", "attention_mask", "action_mask", "rewards", "scores", "response_length"):
            x, y = getattr(a, field), getattr(b, field)
            assert x is not None and y is not None and x.dtype == y.dtype and torch.equal(x, y), field
        assert torch.equal(a.truncated, b.truncated)
        assert sorted(a.info) == sorted(b.info)
        for key in a.info:
            assert torch.equal(a.info[key], b.info[key]), key


def test_darts_composes_with_dynamic_filtering(ray_cluster, darts_engine, tokenizer):
    from openrlhf_darts.trainer.samples_generator import DartsSamplesGenerator

    # Range (0, 1) drops groups whose rewards are all 0 or all 1; replacements are planned and dispatched one by one.
    args = rollout_args(n=4, batch_size=3, dynamic_filtering=True, darts={"enable": True, "selection": "shortest"})
    config = DartsConfig.from_args(args)
    generator, (samples, _, consumed, _) = _generate(DartsSamplesGenerator, darts_engine, tokenizer, args, config)
    assert len(samples) % 4 == 0 and len(samples) <= 3 * 4
    assert consumed >= len(samples) // 4
    # Every dispatched group (kept or filtered out) reported an outcome.
    assert len(generator.last_outcomes) == consumed
    assert ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0


def test_each_group_records_its_own_cap_and_the_length_fit_clips_there(ray_cluster, darts_engine, tokenizer):
    import math
    from types import SimpleNamespace

    from openrlhf_darts.core.length_fit import fit_lengths
    from openrlhf_darts.trainer.planner import prompt_key
    from openrlhf_darts.trainer.samples_generator import DartsSamplesGenerator

    # max_new_tokens None: upstream's executor gives each prompt max_len - its own token count, so prompts of
    # different lengths run under different caps (computed here from the tokenizer).
    prompts = ["a cat", "the dog jumps over the red cat", "one two three four five six seven eight nine ten eleven"]
    prompt_tokens = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    max_len = max(prompt_tokens) + 12
    caps = [max_len - count for count in prompt_tokens]
    assert len(set(caps)) == 3  # precondition: three different caps
    args = rollout_args(n=4, batch_size=3, darts={"enable": True, "selection": "dual_end", "num_long": 1})
    config = DartsConfig.from_args(args)
    generator = DartsSamplesGenerator(
        SimpleNamespace(args=args), prompt_batches(prompts, 3), None, tokenizer, [darts_engine], config
    )
    generator.generate_samples(temperature=1.0, top_p=1.0, max_new_tokens=None, max_len=max_len)
    outcomes = generator.last_outcomes  # in dispatch order: the batch's order
    assert [o.max_tokens for o in outcomes] == caps
    # The length statistics fit each group clipped at its own cap, not at a step-wide guess such as max_len.
    for prompt, outcome, cap in zip(prompts, outcomes, caps):
        fit = fit_lengths(outcome.lengths, outcome.censored, cap)
        assert generator.planner.stats.std(prompt_key(prompt)) == fit.std
    metrics = generator.pop_metrics()
    estimate = metrics["darts/length_mean_estimate"]
    assert math.isfinite(estimate) and 0.0 < estimate <= max(caps)
    assert ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0


def test_warmup_steps_plan_an_even_shortest_only_batch_then_hand_over_to_the_planner(
    ray_cluster, darts_engine, tokenizer
):
    from types import SimpleNamespace

    from openrlhf_darts.core.types import GroupPlan
    from openrlhf_darts.trainer.samples_generator import DartsSamplesGenerator

    # --darts.warmup_steps 1 with dual-end selection (L = 1), n = 4, 3 prompts per step.
    flags = {"enable": True, "selection": "dual_end", "num_long": 1, "warmup_steps": 1}
    args = rollout_args(n=4, batch_size=3, darts=flags)
    config = DartsConfig.from_args(args)
    generator = DartsSamplesGenerator(
        SimpleNamespace(args=args), prompt_batches(PROMPTS, 3), None, tokenizer, [darts_engine], config
    )
    kwargs = dict(temperature=1.0, top_p=1.0, max_new_tokens=40, max_len=512)

    samples, _, consumed, _ = generator.generate_samples(**kwargs)  # step 1 of 1 warm-up step
    assert consumed == 3 and len(samples) == 12
    # Fixed budget round(1.25 n * 3) = 15, spread evenly: 5 each; every group shortest-only despite dual_end.
    assert [o.plan for o in generator.last_outcomes] == [GroupPlan(5, 4, 0)] * 3
    metrics = generator.pop_metrics()
    assert metrics["darts/warmup"] == 1.0 and metrics["darts/shortest_only_ratio"] == 1.0
    assert metrics["darts/budget"] == 15
    assert len(generator.planner.stats) == 3  # the warm-up outcomes still fed the length statistics

    generator.completed_steps = 1  # what DartsPPOTrainer sets after upstream's first training step
    samples, _, consumed, _ = generator.generate_samples(**kwargs)
    assert consumed == 3 and len(samples) == 12
    # Warm-up over: the planner plans. Three unseen prompts get the mean spread, so equal weights: 15 / 3 = 5 each,
    # below M_up = 8, so not pruned: L = 1.
    assert [o.plan for o in generator.last_outcomes] == [GroupPlan(5, 4, 1)] * 3
    assert generator.pop_metrics()["darts/warmup"] == 0.0
    assert ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0


def test_warmup_remainder_follows_the_prompt_not_the_batch_position():
    from openrlhf_darts.trainer.planner import prompt_key
    from openrlhf_darts.trainer.samples_generator import warmup_plans

    # n = 4, avg 4.5 in [4, 8]: 3 prompts -> round(13.5) = 14 candidates = 4 each + 2 left over, which go to the two
    # prompts with the smallest keys, wherever they sit in the batch.
    config = DartsConfig.from_flags({"enable": True, "avg_candidates": 4.5}, 4)
    prompts = PROMPTS[:3]
    counts = {p: plan.num_candidates for p, plan in zip(prompts, warmup_plans(config, prompts))}
    assert sum(counts.values()) == 14 and sorted(counts.values()) == [4, 5, 5]
    assert sorted(p for p in prompts if counts[p] == 5) == sorted(sorted(prompts, key=prompt_key)[:2])
    reversed_batch = prompts[::-1]
    assert {p: plan.num_candidates for p, plan in zip(reversed_batch, warmup_plans(config, reversed_batch))} == counts
    assert all(plan.num_long == 0 for plan in warmup_plans(config, prompts))
