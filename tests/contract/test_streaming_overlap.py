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

    def open_stream(self):
        self.maker.open_stream()

    def dispatch_group(self, group):
        self.groups.append(copy.deepcopy(group))
        self.maker.dispatch_group(group)

    def close_stream(self):
        self.maker.close_stream()

    def abort_stream(self):
        self.maker.abort_stream()


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


def test_stream_tokens_is_rejected_until_the_engine_emits_chunks(tokenizer):
    from openrlhf_darts import upstream
    from openrlhf_darts.trainer.experience_maker import DartsExperienceMaker

    args = _args_with()
    args.darts = NS(enable=True, stream=True, stream_tokens=True)
    with pytest.raises(ValueError, match="engine-side emission"):
        DartsExperienceMaker(
            None,
            None,
            None,
            None,
            upstream.fixed_kl_controller(0.0),
            NS(args=args),
            tokenizer,
            config=DartsConfig.from_args(args),
        )
