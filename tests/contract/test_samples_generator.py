"""DartsSamplesGenerator against upstream's SamplesGenerator on one real engine: counts, fields, contiguity."""

import pytest
from conftest import prompt_batches, rollout_args

from openrlhf_darts.config import DartsConfig

pytestmark = [pytest.mark.contract, pytest.mark.timeout(600)]

PROMPTS = [f"the dog jumps over {i} red cats" for i in range(6)]


def _generate(generator_cls, engine, tokenizer, args, *extra):
    from types import SimpleNamespace

    strategy = SimpleNamespace(args=args)
    generator = generator_cls(strategy, prompt_batches(PROMPTS, args.rollout.batch_size), None, tokenizer, [engine], *extra)
    kwargs = dict(temperature=1.0, top_p=1.0, max_new_tokens=40, max_len=512)
    return generator, generator.generate_samples(**kwargs)


def test_darts_returns_exactly_n_per_prompt_contiguous(ray_cluster, darts_engine, tokenizer):
    from openrlhf_darts.trainer.samples_generator import DartsSamplesGenerator

    args = rollout_args(n=4, batch_size=6, darts={"enable": True, "selection": "dual_end", "num_long": 1})
    config = DartsConfig.from_args(args)
    generator, (samples, _, consumed, _) = _generate(DartsSamplesGenerator, darts_engine, tokenizer, args, config)
    assert consumed == 6 and len(samples) == 6 * 4
    # Groups stay contiguous: every run of 4 samples shares one prompt, and every prompt appears once.
    groups = [samples[i : i + 4] for i in range(0, len(samples), 4)]
    assert sorted(g[0].prompts[0] for g in groups) == sorted(PROMPTS)
    assert all(len({s.prompts[0] for s in g}) == 1 for g in groups)
    metrics = generator.pop_metrics()
    # Default budget: avg 1.25n = 5 candidates per prompt, 6 prompts -> 30 (spec 3(e) fixed mode).
    assert metrics["darts/budget"] == 30
    assert metrics["darts/candidates_mean"] == 5.0
    assert metrics["darts/tokens_generated"] >= metrics["darts/tokens_kept"] > 0
    assert len(generator.last_outcomes) == 6
    assert ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0


def test_darts_off_matches_upstream_counts_and_fields(ray_cluster, darts_engine, tokenizer):
    from openrlhf_darts import upstream
    from openrlhf_darts.trainer.samples_generator import DartsSamplesGenerator

    args = rollout_args(n=3, batch_size=3, darts={})
    config = DartsConfig.from_args(args)
    assert not config.enable
    _, (ours, rate_a, consumed_a, exhausted_a) = _generate(DartsSamplesGenerator, darts_engine, tokenizer, args, config)
    _, (theirs, rate_b, consumed_b, exhausted_b) = _generate(upstream.SamplesGenerator, darts_engine, tokenizer, args)
    assert (len(ours), rate_a, consumed_a, exhausted_a) == (len(theirs), rate_b, consumed_b, exhausted_b) == (9, None, 3, False)
    for a, b in zip(ours, theirs):
        assert sorted(a.info) == sorted(b.info)
        for field in ("sequences", "attention_mask", "action_mask", "rewards", "scores", "response_length", "truncated"):
            assert (getattr(a, field) is None) == (getattr(b, field) is None), field


def test_darts_composes_with_dynamic_filtering(ray_cluster, darts_engine, tokenizer):
    from openrlhf_darts.trainer.samples_generator import DartsSamplesGenerator

    # Range (0, 1) drops groups whose rewards are all 0 or all 1; replacements are planned and dispatched one by one.
    args = rollout_args(n=4, batch_size=3, dynamic_filtering=True, darts={"enable": True, "selection": "shortest"})
    config = DartsConfig.from_args(args)
    generator, (samples, pass_rate, consumed, _) = _generate(DartsSamplesGenerator, darts_engine, tokenizer, args, config)
    assert len(samples) % 4 == 0 and len(samples) <= 3 * 4
    assert consumed >= len(samples) // 4
    # Every dispatched group (kept or filtered out) reported an outcome.
    assert len(generator.last_outcomes) == consumed
    assert ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0
