"""Sample-level streaming on a real Ray cluster: the real DARTS engine generates, CPU model actors score the groups in
waves while the rest still generate, and the result is bit-equal to upstream's non-streamed experience making."""

import copy
from types import SimpleNamespace as NS

import pytest
from conftest import prompt_batches
from test_cpu_actors import make_strategy, train_args

from openrlhf_darts.config import DartsConfig

pytestmark = [pytest.mark.contract, pytest.mark.timeout(600)]

PROMPTS = [f"the farmer counts {i} apples near the river" for i in range(4)]
GEN_KWARGS = dict(temperature=1.0, top_p=1.0, max_new_tokens=40, max_len=512)


class RecordingSink:
    """Passes groups to the maker and keeps deep copies taken before any forward touched them (the reference input)."""

    def __init__(self, maker):
        self.maker = maker
        self.groups = []
        self.keys = []
        self.chunks = []

    def __getattr__(self, name):  # open_stream, close_stream, abort_stream, drop_group, token_streamer
        return getattr(self.maker, name)

    def add_token_chunks(self, chunks):
        self.chunks += chunks
        self.maker.add_token_chunks(chunks)

    def dispatch_group(self, group, **kw):
        self.groups.append(copy.deepcopy(group))
        self.keys.append(kw.get("stream_keys"))
        self.maker.dispatch_group(group, **kw)


@pytest.fixture(scope="module")
def scorers(ray_cluster, darts_engine, stopping_model_path, tmp_path_factory):
    """Policy (1 actor), reference (2 data-parallel actors: waves need >= 2 micro-batches) and critic (1)."""
    from openrlhf_darts.backends.cpu.groups import cpu_actor_group

    args = train_args(stopping_model_path, str(tmp_path_factory.mktemp("streaming")))
    strategy = make_strategy(args)
    groups = NS(
        policy=cpu_actor_group("policy"), reference=cpu_actor_group("reference", 2), critic=cpu_actor_group("critic")
    )
    ray_cluster.get(
        groups.policy.async_init_model_from_pretrained(strategy, stopping_model_path, 10, None)
        + groups.reference.async_init_model_from_pretrained(strategy, stopping_model_path)
        + groups.critic.async_init_model_from_pretrained(strategy, stopping_model_path, 10)
    )
    yield NS(args=args, strategy=strategy, **vars(groups))
    for group in vars(groups).values():
        for actor in group._actor_handlers:
            ray_cluster.kill(actor)


def _maker(cls, scorers, args, tokenizer, **kw):
    """An experience maker over the CPU groups (no reward model: the engine's reward function already scored)."""
    from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController

    return cls(
        scorers.policy,
        scorers.critic,
        None,
        scorers.reference,
        FixedKLController(0.01),
        NS(args=args),
        tokenizer,
        **kw,
    )


def _assert_bit_equal(streamed, plain):
    import torch

    assert len(streamed) == len(plain)
    for a, b in zip(streamed, plain):
        assert a.index == b.index
        for field in (
            "sequences",
            "attention_mask",
            "action_mask",
            "action_log_probs",
            "base_action_log_probs",
            "values",
            "advantages",
            "returns",
            "rewards",
            "response_length",
        ):
            x, y = getattr(a, field), getattr(b, field)
            assert (x is None) == (y is None), field
            if x is not None:
                assert x.dtype == y.dtype and torch.equal(x, y), field
        assert sorted(a.info) == sorted(b.info)
        for key in a.info:
            assert torch.equal(torch.as_tensor(a.info[key]), torch.as_tensor(b.info[key])), key


def test_streamed_experiences_equal_non_streamed(ray_cluster, darts_engine, tokenizer, scorers):
    from openrlhf_darts import upstream
    from openrlhf_darts.trainer.experience_maker import DartsExperienceMaker
    from openrlhf_darts.trainer.samples_generator import DartsSamplesGenerator

    # 4 prompts x n=4 = 16 samples, micro-batch 2 -> 8 micro-batches; the reference has 2 DP actors -> waves >= 2 mb.
    args = copy.deepcopy(scorers.args)
    args.darts = NS(enable=True, stream=True, selection="dual_end", num_long=1)
    args.rollout.batch_size = 4
    config = DartsConfig.from_args(args)
    strategy = NS(args=args)
    generator = DartsSamplesGenerator(strategy, prompt_batches(PROMPTS, 4), None, tokenizer, [darts_engine], config)
    maker = _maker(DartsExperienceMaker, scorers, args, tokenizer, config=config)
    assert maker.min_micro_batches() == 2
    generator.group_sink = sink = RecordingSink(maker)
    samples, _, consumed, _ = generator.generate_samples(**GEN_KWARGS)
    assert consumed == 4 and len(samples) == 16 and len(sink.groups) == 4
    streamed = maker.make_experience_batch(samples)
    metrics = maker.pop_metrics()
    assert metrics["darts/stream_waves"] >= 2  # 8 micro-batches, released as groups finish
    assert metrics["timing/darts_stream_wait"] >= 0 and 0 <= metrics["timing/darts_overlap_hidden_ratio"] <= 1

    # The reference: upstream's own make_experience_batch on untouched copies of the same samples, same order.
    reference_samples = [e for g in sink.groups for e in g]
    plain = _maker(upstream.RemoteExperienceMaker, scorers, args, tokenizer).make_experience_batch(reference_samples)
    _assert_bit_equal(streamed, plain)
    assert [e.index for e in streamed] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12, 13], [14, 15]]
    # Groups stay contiguous: indices 4k..4k+3 share one prompt (upstream reshapes rewards by n = 4).
    prompts = [p for e in streamed for p in e.prompts]
    assert all(len(set(prompts[i : i + 4])) == 1 for i in range(0, 16, 4))
    assert ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0

    # Out-of-order completion: the same groups arriving in reverse get slots 0..3 in arrival order; the result equals
    # upstream's batch over that arrival order, and each group keeps its four samples contiguous.
    reversed_groups = [copy.deepcopy(g) for g in reversed(sink.groups)]
    maker.open_stream()
    for group in reversed_groups:
        maker.dispatch_group(group)
    maker.close_stream()
    streamed_rev = maker.make_experience_batch([e for g in reversed_groups for e in g])
    plain_rev = _maker(upstream.RemoteExperienceMaker, scorers, args, tokenizer).make_experience_batch(
        [copy.deepcopy(e) for g in reversed(sink.groups) for e in g]
    )
    _assert_bit_equal(streamed_rev, plain_rev)
    first_prompt = streamed_rev[0].prompts[0]
    assert first_prompt == sink.groups[-1][0].prompts[0]  # the last group to finish in run 1 arrived first here


def test_make_experience_batch_without_a_stream_is_upstreams(ray_cluster, scorers, tokenizer):
    from openrlhf_darts.trainer.experience_maker import DartsExperienceMaker

    args = copy.deepcopy(scorers.args)
    maker = _maker(
        DartsExperienceMaker,
        scorers,
        args,
        tokenizer,
        config=DartsConfig.from_flags({"enable": True, "stream": True}, 4),
    )
    with pytest.raises(RuntimeError, match="no open stream"):
        maker.dispatch_group([])
    with pytest.raises(ValueError, match="exactly n=4"):
        maker.open_stream()
        maker.dispatch_group([object()] * 3)
    maker.abort_stream()


def _args_with(**train):
    args = train_args("unused", "/tmp/unused")
    args.darts = NS(enable=True, stream=True)
    for key, value in train.items():
        group, name = key.split("__")
        setattr(getattr(args, group), name, value)
    return args


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"train__colocate_all": True}, "--train.colocate_all"),
        ({"vllm__enable_sleep": True}, "--vllm.enable_sleep"),
        ({"train__async_enable": True}, "--train.async_enable"),
    ],
)
def test_streaming_rejects_settings_that_cannot_overlap(setting, message):
    with pytest.raises(ValueError, match=message):
        DartsConfig.from_args(_args_with(**setting))


def test_stream_tokens_needs_stream():
    with pytest.raises(ValueError, match="--darts.stream_tokens needs --darts.stream"):
        DartsConfig.from_flags({"enable": True, "stream_tokens": True}, 4)


def test_maker_rejects_dynamic_batching(tokenizer):
    from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController

    from openrlhf_darts.trainer.experience_maker import DartsExperienceMaker

    args = _args_with(train__dynamic_batch_enable=True)
    with pytest.raises(ValueError, match="--train.dynamic_batch_enable"):
        DartsExperienceMaker(
            None,
            None,
            None,
            None,
            FixedKLController(0.0),
            NS(args=args),
            tokenizer,
            config=DartsConfig.from_args(args),
        )


def _assert_close(streamed, plain, atol=1e-5):
    """Token streaming: the chunk-scored fields equal the full forward within fp32 rounding, the rest exactly."""
    import torch

    assert len(streamed) == len(plain)
    for a, b in zip(streamed, plain):
        assert a.index == b.index
        for field in ("sequences", "attention_mask", "action_mask", "rewards", "response_length"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field
        for field in ("action_log_probs", "values", "kl", "advantages", "returns"):
            x, y = getattr(a, field), getattr(b, field)
            assert (x is None) == (y is None), field
            if x is not None:
                assert x.shape == y.shape and torch.allclose(x, y, atol=atol), (field, (x - y).abs().max())


def _live_caches(ray_cluster, scorers):
    return sum(
        ray_cluster.get(actor.num_live_caches.remote())
        for group in (scorers.policy, scorers.reference, scorers.critic)
        for actor in group._actor_handlers
    )


@pytest.mark.parametrize("candidates", ["dual_end", "exactly_n"])
def test_token_streaming_equals_non_streamed_and_frees_every_cache(
    ray_cluster, darts_engine, tokenizer, scorers, candidates
):
    """The engine emits chunks of certainly-kept candidates while they decode; the scorers' chunk results replace
    those rows' forwards, and the Experiences equal upstream's non-streamed ones (fp32, atol 1e-5)."""
    from openrlhf_darts import upstream
    from openrlhf_darts.trainer.experience_maker import DartsExperienceMaker
    from openrlhf_darts.trainer.samples_generator import DartsSamplesGenerator

    args = copy.deepcopy(scorers.args)
    flags = dict(enable=True, stream=True, stream_tokens=True, stream_chunk_tokens=6, selection="dual_end")
    # dual_end: 5-8 candidates for n=4, the longest streamed once the others finished; exactly_n: M'_i = n, so every
    # candidate is certain to be kept and streamed from its first chunk.
    flags.update(num_long=1) if candidates == "dual_end" else flags.update(min_candidates=4, max_candidates=4)
    args.darts = NS(**flags)
    args.rollout.batch_size = 4
    config = DartsConfig.from_args(args)
    generator = DartsSamplesGenerator(NS(args=args), prompt_batches(PROMPTS, 4), None, tokenizer, [darts_engine], config)
    maker = _maker(DartsExperienceMaker, scorers, args, tokenizer, config=config)
    generator.group_sink = sink = RecordingSink(maker)
    # 120 tokens: the random model stops ~4% a step, so the longest candidate usually outlives the others by chunks.
    samples, _, consumed, _ = generator.generate_samples(**{**GEN_KWARGS, "max_new_tokens": 120})
    assert consumed == 4 and len(samples) == 16
    streamed = maker.make_experience_batch(samples)
    metrics = maker.pop_metrics()

    assert sink.chunks, "the engine emitted no token chunk"
    prompt_len = {p: len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in PROMPTS}
    assert metrics["darts/stream_token_chunks"] == len(sink.chunks)
    assert metrics["darts/stream_token_finished"] >= 1  # at least one kept sample was scored from its chunks
    assert metrics["darts/stream_token_finished"] + metrics["darts/stream_token_released"] == (
        metrics["darts/stream_token_samples"]
    )
    assert metrics["darts/stream_token_peak_cache_bytes"] > 0 and metrics["timing/darts_chunk_forward"] > 0
    if candidates == "exactly_n":
        # Every sample longer than the prompt + one chunk streamed; none dropped, nothing wasted.
        assert metrics["darts/stream_token_released"] == 0 and metrics["darts/stream_token_wasted_tokens"] == 0
        long_enough = sum(e.sequences.shape[1] - prompt_len[e.prompts[0]] >= 6 for e in samples)
        assert metrics["darts/stream_token_finished"] == long_enough
    # Chunks are full: the prompt + 6 response tokens first, then 6 each; each one is a slice of its kept sample's
    # final sequence (the chunks of dropped candidates were released).
    kept = {k: e for group, keys in zip(sink.groups, sink.keys) for k, e in zip(keys, group)}
    assert len(kept) == 16
    for chunk in sink.chunks:
        if chunk["key"] in kept:
            e = kept[chunk["key"]]
            start, tokens = chunk["start"], chunk["tokens"]
            assert len(tokens) == (prompt_len[e.prompts[0]] + 6 if start == 0 else 6)
            assert e.sequences[0, start : start + len(tokens)].tolist() == tokens
    assert _live_caches(ray_cluster, scorers) == 0
    assert ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0

    reference_samples = [e for g in sink.groups for e in g]
    plain = _maker(upstream.RemoteExperienceMaker, scorers, args, tokenizer).make_experience_batch(reference_samples)
    _assert_close(streamed, plain)


def test_token_streamer_releases_dropped_and_abandoned_samples(ray_cluster, scorers, tokenizer):
    """Caches of candidates their group did not keep, and of a step that failed, are freed (live caches counted)."""
    from openrlhf_darts.trainer.token_stream import TokenStreamer, scorer_groups

    groups = scorer_groups(scorers.policy, scorers.reference, scorers.critic)
    streamer = TokenStreamer(groups, max_live=3)
    prompt = tokenizer("the farmer counts apples", add_special_tokens=False)["input_ids"]
    streamer.add(
        [
            {"key": "7/0", "group_id": 7, "start": 0, "tokens": prompt + [11, 12]},
            {"key": "7/1", "group_id": 7, "start": 0, "tokens": prompt + [13, 14]},
            {"key": "8/0", "group_id": 8, "start": 0, "tokens": prompt + [15, 16]},
        ]
    )
    streamer.add([{"key": "7/0", "group_id": 7, "start": len(prompt) + 2, "tokens": [17, 18]}])
    streamer.drain()
    # Policy and critic have one actor each, max_live=3: all three samples found room in every group.
    assert streamer.metrics["samples"] == 3 and streamer.metrics["skipped"] == 0
    assert _live_caches(ray_cluster, scorers) == 3 * 3  # policy + reference + critic hold each sample
    streamer.release_group(7, keep={"7/0"})  # 7/1 was dropped by selection
    streamer.drain()
    assert _live_caches(ray_cluster, scorers) == 2 * 3 and streamer.metrics["wasted_tokens"] == len(prompt) + 2
    with pytest.raises(RuntimeError, match="starts at 3, expected"):
        streamer.add([{"key": "8/0", "group_id": 8, "start": 3, "tokens": [1]}])
    streamer.release_all()  # a failed step
    streamer.drain()
    assert _live_caches(ray_cluster, scorers) == 0 and streamer.live_keys() == []


def test_token_streamer_skips_samples_when_caches_are_full(ray_cluster, scorers, tokenizer):
    from openrlhf_darts.trainer.token_stream import TokenStreamer, scorer_groups

    streamer = TokenStreamer(scorer_groups(scorers.policy, None, None), max_live=1)
    streamer.add([{"key": f"1/{i}", "group_id": 1, "start": 0, "tokens": [5, 6, 7]} for i in range(2)])
    assert streamer.metrics["samples"] == 1 and streamer.metrics["skipped"] == 1
    assert streamer.finish("1/1", __import__("torch").tensor([[5, 6, 7]]), None) is None  # skipped: ordinary forward
    streamer.release_all()
    streamer.drain()
    assert _live_caches(ray_cluster, scorers) == 0


def test_failed_step_releases_token_caches(ray_cluster, scorers, tokenizer):
    """abort_stream (generation failed) frees every cache the step's chunks opened."""
    from openrlhf_darts.trainer.experience_maker import DartsExperienceMaker

    args = copy.deepcopy(scorers.args)
    args.darts = NS(enable=True, stream=True, stream_tokens=True)
    maker = _maker(DartsExperienceMaker, scorers, args, tokenizer, config=DartsConfig.from_args(args))
    maker.open_stream()
    maker.add_token_chunks([{"key": f"3/{i}", "group_id": 3, "start": 0, "tokens": [5, 6, 7, 8]} for i in range(2)])
    maker.token_streamer.drain()
    assert _live_caches(ray_cluster, scorers) == 2 * 3
    maker.abort_stream()
    maker.token_streamer.drain()
    assert _live_caches(ray_cluster, scorers) == 0 and maker.token_streamer.live_keys() == []
    with pytest.raises(RuntimeError, match="no open stream"):
        maker.add_token_chunks([])
