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
# Early release: with an 80-token cap the longest of 5 candidates usually outlives the 3rd shortest by many steps.
RELEASE_KWARGS = {**GEN_KWARGS, "max_new_tokens": 80}


class RecordingSink:
    """Passes parts and groups to the maker and keeps deep copies of their samples taken when they reached it, before
    any forward ran (the reference input), plus what had been scored at each dispatch."""

    def __init__(self, maker):
        self.maker = maker
        self.copies = {}  # id(sample) -> its deep copy
        self.keys = {}  # id(sample) -> darts_stream_key
        self.groups = {}  # group id -> the accepted group's samples, rank order
        self.parts = {}  # group id -> the early part's samples
        self.events = []  # (kind, group id, samples, of the group's early part: how many were scored already)
        self.chunks = []

    def __getattr__(self, name):  # open_stream, close_stream, abort_stream, drop_group, token_streamer
        return getattr(self.maker, name)

    def add_token_chunks(self, chunks):
        self.chunks += chunks
        self.maker.add_token_chunks(chunks)

    def dispatch_part(self, part, **kw):
        self._record("part", part, kw)
        self.parts[kw["group_id"]] = list(part)
        self.maker.dispatch_part(part, **kw)

    def dispatch_group(self, group, **kw):
        self._record("group", group, kw)
        self.groups[kw.get("group_id")] = list(group)
        self.maker.dispatch_group(group, **kw)

    def scored(self, samples) -> int:
        """How many of `samples` sit in a micro-batch the maker has already sent to scoring."""
        stream = self.maker._stream
        handles = {h for w in stream.layout.waves for mb in w.micro_batches for h in mb.samples}
        return sum(1 for h in handles if any(stream.samples[h] is s for s in samples))

    def _record(self, kind, samples, kw):
        keys = kw.get("stream_keys") or [None] * len(samples)
        for sample, key in zip(samples, keys):
            if id(sample) not in self.copies:
                self.copies[id(sample)] = copy.deepcopy(sample)
                self.keys[id(sample)] = key
        early = self.parts.get(kw.get("group_id"), []) if kind == "group" else []
        self.events.append((kind, kw.get("group_id"), len(samples), self.scored(early)))

    def reference(self, samples):
        """Untouched copies of `samples`, same order."""
        return [self.copies[id(s)] for s in samples]


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


def _response_length(experience) -> int:
    return int(experience.response_length[0])


def test_streamed_experiences_equal_non_streamed(ray_cluster, darts_engine, tokenizer, scorers):
    from openrlhf_darts import upstream
    from openrlhf_darts.trainer.experience_maker import DartsExperienceMaker
    from openrlhf_darts.trainer.samples_generator import DartsSamplesGenerator

    # 4 prompts x n=4 = 16 samples, micro-batch 2 -> 8 micro-batches; the reference has 2 DP actors -> waves >= 2 mb.
    # Dual-end, L = 1: each group's K = 3 shortest go to the maker as soon as they are final, the longest later.
    args = copy.deepcopy(scorers.args)
    args.darts = NS(enable=True, stream=True, selection="dual_end", num_long=1)
    args.rollout.batch_size = 4
    config = DartsConfig.from_args(args)
    strategy = NS(args=args)
    generator = DartsSamplesGenerator(strategy, prompt_batches(PROMPTS, 4), None, tokenizer, [darts_engine], config)
    maker = _maker(DartsExperienceMaker, scorers, args, tokenizer, config=config)
    assert maker.min_micro_batches() == 2
    generator.group_sink = sink = RecordingSink(maker)
    samples, _, consumed, _ = generator.generate_samples(**RELEASE_KWARGS)
    assert consumed == 4 and len(samples) == 16 and len(sink.groups) == 4
    # Precondition: some group's short end reached the maker, and had a micro-batch scored, before its long end
    # existed. vLLM samples a shared engine's requests from one generator, so no seed fixes the lengths; with 5
    # candidates stopping ~4% a step under an 80-token cap, the longest outlives the 3rd shortest by >= 5 decode
    # steps in at least two of the four groups in all but ~5e-4 of runs (Monte Carlo, 1e5 runs). The replay test
    # below checks the same release deterministically.
    parts = [e for e in sink.events if e[0] == "part"]
    assert parts and all(size == 3 for _, _, size, _ in parts), sink.events
    assert any(kind == "group" and scored > 0 for kind, _, _, scored in sink.events), sink.events
    streamed = maker.make_experience_batch(samples)
    metrics = maker.pop_metrics()
    assert metrics["darts/stream_waves"] >= 2  # 8 micro-batches, released as parts and groups arrive
    assert metrics["darts/stream_early_samples"] == 3 * len(parts)
    assert metrics["timing/darts_stream_wasted"] == 0  # nothing was dropped
    assert metrics["timing/darts_stream_wait"] >= 0 and 0 <= metrics["timing/darts_overlap_hidden_ratio"] <= 1

    # The reference: upstream's own make_experience_batch on untouched copies of the same samples, same order.
    plain = _maker(upstream.RemoteExperienceMaker, scorers, args, tokenizer).make_experience_batch(
        sink.reference(samples)
    )
    _assert_bit_equal(streamed, plain)
    assert [e.index for e in streamed] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12, 13], [14, 15]]
    # Groups stay contiguous: indices 4k..4k+3 are one group (upstream reshapes rewards by n = 4), its early part
    # first. The part is the group's K shortest valid candidates: no other kept sample is shorter (the long end is
    # the longest valid one, or a truncated one at the cap).
    blocks = [samples[i : i + 4] for i in range(0, 16, 4)]
    assert sorted(id(s) for b in blocks for s in b) == sorted(id(s) for g in sink.groups.values() for s in g)
    for group_id, group in sink.groups.items():
        assert any(all(a is b for a, b in zip(block, group)) for block in blocks)
        part = sink.parts.get(group_id)
        if part is not None:
            assert all(a is b for a, b in zip(group, part))
            assert max(map(_response_length, part)) <= min(map(_response_length, group[3:]))
    assert ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0
    assert ray_cluster.get(darts_engine.pop_stream_outbox.remote()) == {"chunks": [], "parts": []}

    # Replay, deterministic: the same four groups with every short end arriving before any long end, the long ends in
    # reverse order. The first wave is cut from short-end micro-batches alone, before any group is complete.
    groups = [[copy.deepcopy(sink.copies[id(s)]) for s in g] for g in sink.groups.values()]
    maker.open_stream()
    for gid, group in enumerate(groups):
        maker.dispatch_part(group[:3], group_id=gid)
    # Each short end fills micro-batch [4g, 4g+2); ranks 2-3 wait for the long end. Two ready (of 2 actors) with 6
    # to come: a wave, twice, while no group is complete.
    assert [[mb.start for mb in w.micro_batches] for w in maker._stream.layout.waves] == [[0, 4], [8, 12]]
    for gid in reversed(range(4)):
        maker.dispatch_group(groups[gid], group_id=gid)
    order = maker.close_stream()
    assert all(a is b for a, b in zip(order, [s for g in groups for s in g]))  # slots in order of the short ends
    replayed = maker.make_experience_batch(order)
    metrics = maker.pop_metrics()
    # All 12 short-end samples went out before their groups ended; after the last long end (group 0) arrived, only
    # the micro-batches it completed were left: [2, 4) and [6, 8) (group 1's, held back so no wave has < 2).
    assert metrics["darts/stream_early_samples"] == 12 and metrics["darts/stream_late_samples"] == 4
    reference = [copy.deepcopy(sink.copies[id(s)]) for g in sink.groups.values() for s in g]
    _assert_bit_equal(
        replayed, _maker(upstream.RemoteExperienceMaker, scorers, args, tokenizer).make_experience_batch(reference)
    )

    # Out-of-order completion: the same groups arriving whole in reverse get slots 0..3 in arrival order; the result
    # equals upstream's batch over that arrival order, and each group keeps its four samples contiguous.
    reversed_groups = [[copy.deepcopy(sink.copies[id(s)]) for s in g] for g in reversed(list(sink.groups.values()))]
    maker.open_stream()
    for group in reversed_groups:
        maker.dispatch_group(group)
    order = maker.close_stream()
    streamed_rev = maker.make_experience_batch(order)
    plain_rev = _maker(upstream.RemoteExperienceMaker, scorers, args, tokenizer).make_experience_batch(
        [copy.deepcopy(e) for g in reversed_groups for e in g]
    )
    _assert_bit_equal(streamed_rev, plain_rev)
    assert streamed_rev[0].prompts[0] == list(sink.groups.values())[-1][0].prompts[0]


def test_a_group_dropped_after_its_short_end_was_scored_wastes_only_that_forward(
    ray_cluster, darts_engine, tokenizer, scorers
):
    """Dynamic filtering judges whole groups: one whose short end was already scored is dropped, its slot goes to the
    replacement prompt, the batch equals upstream's over what was accepted, and the scored part counts as wasted."""
    from openrlhf_darts import upstream
    from openrlhf_darts.trainer.experience_maker import DartsExperienceMaker
    from openrlhf_darts.trainer.samples_generator import DartsSamplesGenerator

    args = copy.deepcopy(scorers.args)
    args.darts = NS(enable=True, stream=True, selection="dual_end", num_long=1)
    args.rollout.batch_size = 4
    args.algo.dynamic_filtering_enable = True
    args.algo.dynamic_filtering_range = [-1.0, 2.0]  # every mean score passes: only the one forced drop below
    config = DartsConfig.from_args(args)
    dropped = []

    class DropOneScoredShortEnd(DartsSamplesGenerator):
        """Judges like upstream, except that it rejects the first group whose early part was already scored."""

        def _passes_dynamic_filter(self, group):
            if not dropped and sink.scored(group) > 0:
                dropped.append(group)
                return False
            return super()._passes_dynamic_filter(group)

    prompts = PROMPTS + ["the farmer counts apples near the old mill"]  # one spare prompt for the replacement
    generator = DropOneScoredShortEnd(
        NS(args=args), prompt_batches(prompts, 4), None, tokenizer, [darts_engine], config
    )
    maker = _maker(DartsExperienceMaker, scorers, args, tokenizer, config=config)
    generator.group_sink = sink = RecordingSink(maker)
    samples, _, consumed, _ = generator.generate_samples(**RELEASE_KWARGS)
    # Precondition (see the test above for its odds): some group's short end was scored before the group ended.
    assert len(dropped) == 1, sink.events
    assert consumed == 5 and len(samples) == 16 and not {id(s) for s in dropped[0]} & {id(s) for s in samples}
    streamed = maker.make_experience_batch(samples)
    metrics = maker.pop_metrics()
    assert metrics["timing/darts_stream_wasted"] > 0
    plain = _maker(upstream.RemoteExperienceMaker, scorers, args, tokenizer).make_experience_batch(
        sink.reference(samples)
    )
    _assert_bit_equal(streamed, plain)
    assert ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0


def test_replayed_drop_frees_the_slot_and_counts_the_waste(ray_cluster, darts_engine, tokenizer, scorers):
    """Deterministic: group 0's short end is scored, then group 0 is dropped; group 2 takes its slot."""
    from openrlhf_darts import upstream
    from openrlhf_darts.trainer.experience_maker import DartsExperienceMaker
    from openrlhf_darts.trainer.samples_generator import DartsSamplesGenerator

    args = copy.deepcopy(scorers.args)
    args.darts = NS(enable=True, stream=True, selection="dual_end", num_long=1)
    args.rollout.batch_size = 3
    config = DartsConfig.from_args(args)
    generator = DartsSamplesGenerator(
        NS(args=args), prompt_batches(PROMPTS[:3], 3), None, tokenizer, [darts_engine], config
    )
    samples, *_ = generator.generate_samples(**GEN_KWARGS)  # three real groups of 4 (no sink: upstream's loop)
    groups = [samples[i : i + 4] for i in range(0, 12, 4)]
    args.rollout.batch_size = 2  # the replayed step keeps 2 groups: 2 x 4 / 2 = 4 micro-batches, waves of >= 2
    maker = _maker(DartsExperienceMaker, scorers, args, tokenizer, config=config)
    copies = [[copy.deepcopy(s) for s in g] for g in groups]
    maker.open_stream()
    maker.dispatch_part(copies[0][:3], group_id=0)  # slot 0: micro-batch [0, 2) ready
    maker.dispatch_part(copies[1][:3], group_id=1)  # slot 1: [4, 6) ready -> wave of 2, 2 to come
    assert [mb.start for w in maker._stream.layout.waves for mb in w.micro_batches] == [0, 4]
    maker.drop_group(0)  # dynamic filtering rejected group 0 once it was complete
    maker.dispatch_group(copies[1], group_id=1)
    maker.dispatch_group(copies[2], group_id=2)  # the replacement takes slot 0
    order = maker.close_stream()
    assert all(a is b for a, b in zip(order, copies[2] + copies[1]))
    streamed = maker.make_experience_batch(order)
    metrics = maker.pop_metrics()
    # Waves: (g0 [0, 2), g1 [4, 6)), then (g2 [0, 2), g2 [2, 4), g1 [6, 8)): half of the first wave is wasted.
    assert metrics["timing/darts_stream_wasted"] > 0 and metrics["darts/stream_waves"] == 2
    reference = [copy.deepcopy(s) for s in groups[2] + groups[1]]
    _assert_bit_equal(
        streamed, _maker(upstream.RemoteExperienceMaker, scorers, args, tokenizer).make_experience_batch(reference)
    )


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
    generator = DartsSamplesGenerator(
        NS(args=args), prompt_batches(PROMPTS, 4), None, tokenizer, [darts_engine], config
    )
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
    kept = {sink.keys[id(e)]: e for group in sink.groups.values() for e in group}
    assert len(kept) == 16
    for chunk in sink.chunks:
        if chunk["key"] in kept:
            e = kept[chunk["key"]]
            start, tokens = chunk["start"], chunk["tokens"]
            assert len(tokens) == (prompt_len[e.prompts[0]] + 6 if start == 0 else 6)
            assert e.sequences[0, start : start + len(tokens)].tolist() == tokens
    assert _live_caches(ray_cluster, scorers) == 0
    assert ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0

    plain = _maker(upstream.RemoteExperienceMaker, scorers, args, tokenizer).make_experience_batch(
        sink.reference(samples)
    )
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


def test_failed_step_leaves_no_request_chunk_part_or_cache(ray_cluster, darts_engine, tokenizer, scorers):
    """The sink fails on the first samples it gets, while the other groups still decode: generate_samples raises, and
    afterwards the engine runs no request, its outboxes and group records are empty and no scorer holds a cache."""
    from openrlhf_darts.trainer.experience_maker import DartsExperienceMaker
    from openrlhf_darts.trainer.samples_generator import DartsSamplesGenerator

    args = copy.deepcopy(scorers.args)
    args.darts = NS(enable=True, stream=True, stream_tokens=True, stream_chunk_tokens=6, selection="dual_end")
    args.rollout.batch_size = 4
    config = DartsConfig.from_args(args)
    generator = DartsSamplesGenerator(
        NS(args=args), prompt_batches(PROMPTS, 4), None, tokenizer, [darts_engine], config
    )
    maker = _maker(DartsExperienceMaker, scorers, args, tokenizer, config=config)
    running = []

    class FailingSink(RecordingSink):
        def _record(self, kind, samples, kw):
            running.append(ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()))
            raise RuntimeError("scoring failed")

    generator.group_sink = FailingSink(maker)
    with pytest.raises(RuntimeError, match="scoring failed"):
        generator.generate_samples(**{**GEN_KWARGS, "max_new_tokens": 200})
    assert running and running[0] > 0  # precondition: requests were still running when the step failed
    assert ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0
    assert ray_cluster.get(darts_engine.pop_stream_outbox.remote()) == {"chunks": [], "parts": []}
    assert ray_cluster.get(darts_engine.pop_group_outcomes.remote()) == []
    maker.token_streamer.drain()
    assert _live_caches(ray_cluster, scorers) == 0
