"""Every failure path of a DARTS rollout step, once, on a real vLLM CPU engine and Ray cluster (issue 13 item 2).

This module starts its own engine through OpenRLHF's `create_vllm_engines` (second logical GPU, removed with its
placement group afterwards): `FaultInjectingRolloutActor` (tests/contract/assets/fault_injection.py), the DARTS engine
actor plus a `generate` that fails one armed candidate once it decodes, and `label_reward.py`, a reward function whose
behaviour is chosen by the sample's label. Each failure:

- fails the step (`DartsSamplesGenerator.generate_samples`) with an error naming the cause;
- leaves no unfinished request in the engine, read from the engine itself (`get_num_unfinished_requests`) right after
  the step raised, and no outcome or token chunk of the failed step behind;
- and where requests were cut, vLLM's own counters (`vllm:generation_tokens`, `vllm:request_success` by finish
  reason, read from the engine process by `rollout.engine_counters`) show that no request of the step ran to
  its end.

The paths that must work (streaming with dynamic filtering, a dataloader shorter than the rollout batch, `max_len`
cutting a token-streamed sample) are checked against upstream's own non-streamed experience making on the same samples.
`pytest tests/contract/test_failure_paths.py -s` prints the message of every failure (`[failure path]` lines).
"""

import copy
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace as NS

import pytest
from conftest import rollout_args
from test_streaming_overlap import (  # noqa: F401
    RecordingSink,
    _assert_bit_equal,
    _assert_close,
    _live_caches,
    _maker,
    scorers,
)

from openrlhf_darts.rollout.engine_counters import engine_counters
from openrlhf_darts.config import DartsConfig

pytestmark = [pytest.mark.contract, pytest.mark.timeout(900)]

ASSETS = Path(__file__).parent / "assets"
PROMPTS = [f"the {word} walks past {i} old trees" for i, word in enumerate(("cat", "fox", "hen", "cow", "pig", "owl"))]
LONG = 128  # min_new_tokens = max_new_tokens: a candidate runs exactly this long unless it is aborted
CANDIDATES = 4  # --darts.min_candidates = max_candidates: every group of the fault tests runs 4 candidates


def _load_fault_module():
    """The asset module, registered so that Ray pickles its classes by value (the engine's worker cannot import it)."""
    import ray.cloudpickle

    name = "darts_fault_injection"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ASSETS / "fault_injection.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        ray.cloudpickle.register_pickle_by_value(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def fault_engine(ray_cluster, stopping_model_path):
    import ray
    from ray.util import placement_group_table, remove_placement_group
    from ray.util.placement_group import PlacementGroup

    from openrlhf_darts import upstream

    module = _load_fault_module()
    before = set(placement_group_table())
    with upstream.rollout_actor_class(module.FaultInjectingRolloutRayActor):
        engines = upstream.create_vllm_engines(
            1, 1, stopping_model_path, 0, False, True, True, 512, None, 0.15, False, None,
            remote_rm_url=str(ASSETS / "label_reward.py"),
        )  # fmt: skip
    engine = engines[0]
    ray.get(engine.get_num_unfinished_requests.remote())
    yield engine
    ray.kill(engine)
    for pg_id in set(placement_group_table()) - before:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg_id)))


@pytest.fixture
def engine(ray_cluster, fault_engine):
    """The module's engine, clean before and after each test (no armed fault, no outcome or chunk left over)."""
    ray_cluster.get(fault_engine.disarm.remote())
    ray_cluster.get([fault_engine.pop_group_outcomes.remote(), fault_engine.pop_token_chunks.remote()])
    yield fault_engine
    ray_cluster.get([fault_engine.disarm.remote(), fault_engine.use_agent.remote(None)])


def _delta(after: dict, before: dict) -> dict:
    return {key: after[key] - before.get(key, 0) for key in after}


def _batches(prompts, labels, batch_size):
    """A prompts dataloader in upstream's item format, with our labels: (datasource, prompts, labels, images)."""
    return [
        (["test"] * len(prompts[i : i + batch_size]), prompts[i : i + batch_size], labels[i : i + batch_size],
         [None] * len(prompts[i : i + batch_size]))
        for i in range(0, len(prompts), batch_size)
    ]  # fmt: skip


def _generator(engine, tokenizer, prompts, labels, args):
    from openrlhf_darts.trainer.samples_generator import DartsSamplesGenerator

    batches = _batches(prompts, labels, args.rollout.batch_size)
    return DartsSamplesGenerator(NS(args=args), batches, None, tokenizer, [engine], DartsConfig.from_args(args))


def _fault_args():
    # n = 2 kept of 4 candidates per prompt: min = max = 4, so every group is pruned to shortest-only (M'_i = M_up).
    darts = {"enable": True, "selection": "shortest", "min_candidates": CANDIDATES, "max_candidates": CANDIDATES}
    return rollout_args(n=2, batch_size=3, darts=darts)


def _failing_step(ray_cluster, engine, generator, **generate_kwargs) -> str:
    """Run one training rollout that must fail; return the error message after checking what it left behind."""
    with pytest.raises(Exception) as raised:
        generator.generate_samples(**generate_kwargs)
    # Read right after the step raised: no request of the step is left in the engine, nothing of it is kept.
    assert ray_cluster.get(engine.get_num_unfinished_requests.remote()) == 0
    assert ray_cluster.get(engine.pop_group_outcomes.remote()) == []
    assert ray_cluster.get(engine.pop_token_chunks.remote()) == []
    assert generator._group_prompts == {} and generator.last_outcomes == []
    return str(raised.value)


def _print_failure(name: str, message: str) -> None:
    # The message as the driver shows it: Ray prefixes the engine's traceback; its last lines are the error.
    print(f"\n[failure path] {name}:\n{message}")


# ---- failures ---------------------------------------------------------------------------------------------------


def test_reward_function_that_raises_fails_the_step(ray_cluster, engine, tokenizer):
    # Three prompts; the second one's label makes the reward function raise for each of its kept samples.
    generator = _generator(engine, tokenizer, PROMPTS[:3], ["", "raise", ""], _fault_args())
    message = _failing_step(ray_cluster, engine, generator, temperature=1.0, max_new_tokens=24, max_len=512)
    _print_failure("reward function raises", message)
    assert "DARTS group 1: the reward call to [" in message and "label_reward.py'] returned no reward" in message
    # The cause, as upstream's executor logged it before returning reward=None.
    assert "Failed to fetch reward from remote RM: reward_func failed on purpose for label 'raise'" in message


def test_reward_endpoint_without_a_reward_fails_the_step(ray_cluster, engine, tokenizer):
    generator = _generator(engine, tokenizer, PROMPTS[:3], ["", "", "no_reward"], _fault_args())
    message = _failing_step(ray_cluster, engine, generator, temperature=1.0, max_new_tokens=24, max_len=512)
    _print_failure("reward endpoint returns no reward", message)
    assert "DARTS group 2: the reward call to [" in message and "returned no reward for kept candidate" in message
    assert "(2 of 2 kept samples without one)" in message
    assert "upstream's executor logged no error, so the reward function or endpoint answered without a 'rewards'" in (
        message
    )


@pytest.mark.parametrize("kind", ["abort", "error"])
def test_one_failing_candidate_fails_the_step_and_aborts_every_request(ray_cluster, engine, tokenizer, kind):
    """kind "abort": candidate 2 of group 1 ends with finish_reason "abort" that its group never asked for (another
    caller aborted it through vLLM); kind "error": the engine fails candidate 2 of group 1 (injected).

    Every candidate of the step must decode exactly LONG = 128 tokens to finish by itself (min = max new tokens), and
    the fault fires when the faulty one has decoded 4, so its three siblings and the two other groups' four
    candidates each are still decoding: all of them must be aborted, not left to run."""
    generator = _generator(engine, tokenizer, PROMPTS[:3], [""] * 3, _fault_args())
    ray_cluster.get(engine.arm.remote(kind, group_id=1, candidate=2, after_tokens=4))
    before = engine_counters(engine)
    message = _failing_step(
        ray_cluster, engine, generator, temperature=1.0, max_new_tokens=LONG, min_new_tokens=LONG, max_len=512
    )
    spent = _delta(engine_counters(engine), before)
    report = ray_cluster.get(engine.fault_report.remote())
    _print_failure(f"one candidate fails ({kind})", message)
    print(f"[failure path] vLLM counters over the step: {spent}; at the fault: {report}")

    # Precondition: when the fault fired, every candidate of its group had its request in vLLM and none had stopped.
    assert report["kind"] == kind and report["submitted"] == [True] * CANDIDATES and report["stopped"] == []
    assert report["seen"][2] >= 4
    # vLLM finished no request by itself (stop or length): all 12 were aborted, so fewer tokens than 12 x 128.
    assert spent.get("finished_stop", 0) == spent.get("finished_length", 0) == 0, spent
    assert 0 < spent["generation_tokens"] < 3 * CANDIDATES * LONG
    if kind == "abort":
        assert "DARTS group 1: candidate 2 ended with finish_reason='abort' after" in message
        assert "though its group did not abort it" in message
    else:
        assert "InjectedEngineError: injected engine error in candidate 2 of group 1" in message
    # The note on the original error names the group and what happened to its siblings.
    assert "DARTS group 1: candidate 2 of 4 failed; the group's other candidates were cancelled" in message


def test_generation_failing_while_streaming_aborts_the_stream(ray_cluster, engine, tokenizer, scorers):
    """--darts.stream: groups 0-2 of four are scored while group 3 generates; then the engine fails a candidate of
    group 3 (before its request starts, once the other three groups are done). The step fails, the experience maker's
    stream is aborted, and the next step's batch holds only its own samples, equal to upstream's non-streamed ones."""
    from openrlhf_darts import upstream
    from openrlhf_darts.trainer.experience_maker import DartsExperienceMaker

    args = copy.deepcopy(scorers.args)
    args.darts = NS(enable=True, stream=True, selection="shortest", min_candidates=3, max_candidates=3)
    args.rollout.batch_size, args.rollout.n_samples_per_prompt = 4, 2
    config = DartsConfig.from_args(args)
    generator = _generator(engine, tokenizer, PROMPTS[:4] + [f"next {p}" for p in PROMPTS[:4]], [""] * 8, args)
    maker = _maker(DartsExperienceMaker, scorers, args, tokenizer, config=config)
    generator.group_sink = sink = RecordingSink(maker)
    ray_cluster.get(engine.arm.remote("error", group_id=3, candidate=0, after_groups=3))
    kwargs = dict(temperature=1.0, max_new_tokens=16, max_len=512)

    message = _failing_step(ray_cluster, engine, generator, **kwargs)
    _print_failure("generation fails while streaming", message)
    assert "InjectedEngineError: injected engine error in candidate 0 of group 3" in message
    # Precondition: the three finished groups reached the experience maker (their waves were dispatched).
    assert sorted(g[0].prompts[0] for g in sink.groups.values()) == sorted(PROMPTS[:3])
    with pytest.raises(RuntimeError, match="no open stream"):  # the maker's stream was aborted
        maker.dispatch_group([])

    # The next step streams its own four groups only: indices 0..7, equal to upstream's non-streamed experiences.
    generator.group_sink = sink = RecordingSink(maker)  # a fresh record (ids of the failed step's samples may recur)
    samples, _, consumed, _ = generator.generate_samples(**kwargs)
    assert consumed == 4 and len(samples) == 8
    assert {e.prompts[0] for e in samples} == {f"next {p}" for p in PROMPTS[:4]}
    streamed = maker.make_experience_batch(samples)
    assert [i for e in streamed for i in e.index] == list(range(8))
    plain = _maker(upstream.RemoteExperienceMaker, scorers, args, tokenizer).make_experience_batch(
        sink.reference(samples)
    )
    _assert_bit_equal(streamed, plain)
    assert ray_cluster.get(engine.get_num_unfinished_requests.remote()) == 0


# ---- paths that must work ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_dynamic_filtering_drops_a_group_and_plans_its_replacement(ray_cluster, engine, tokenizer, scorers, stream):
    """Range (0, 1): the "one" prompt's group (every reward 1.0, mean 1.0) is dropped after it was generated; one
    replacement prompt is drawn, planned and generated. Labels make the outcome certain (label_reward.py): the other
    groups' rewards alternate 0, 1, so their mean 0.5 passes. With --darts.stream --darts.stream_tokens (M'_i = n:
    every candidate is streamed from its first chunk) the dropped group's chunk caches are released."""
    from openrlhf_darts import upstream
    from openrlhf_darts.trainer.experience_maker import DartsExperienceMaker

    args = copy.deepcopy(scorers.args)
    flags = dict(enable=True, selection="shortest", min_candidates=2, max_candidates=2)
    if stream:
        flags.update(stream=True, stream_tokens=True, stream_chunk_tokens=4)
    args.darts = NS(**flags)
    args.rollout.batch_size, args.rollout.n_samples_per_prompt = 2, 2
    args.algo.dynamic_filtering_enable, args.algo.dynamic_filtering_range = True, [0.0, 1.0]
    config = DartsConfig.from_args(args)
    prompts, labels = PROMPTS[:3], ["one", "", ""]
    generator = _generator(engine, tokenizer, prompts, labels, args)
    if stream:
        maker = _maker(DartsExperienceMaker, scorers, args, tokenizer, config=config)
        generator.group_sink = sink = RecordingSink(maker)
    # 12-24 tokens per sample: at least 3 chunks of 4 beyond the prompt, so the dropped group was streamed.
    samples, pass_rate, consumed, _ = generator.generate_samples(
        temperature=1.0, max_new_tokens=24, min_new_tokens=12, max_len=512
    )

    # Prompt 0 dropped, prompt 2 drawn in its place: 3 prompts consumed, 2 groups of n = 2 kept.
    assert consumed == 3 and len(samples) == 4
    assert sorted({e.prompts[0] for e in samples}) == sorted(prompts[1:])
    assert all(e.rewards.item() in (0.0, 1.0) for e in samples)
    # The replacement was planned on its own and every dispatched group (the dropped one too) reported its outcome.
    assert sorted(generator._group_prompts) == [] and len(generator.last_outcomes) == 3
    metrics = generator.pop_metrics()
    assert metrics["darts/budget"] == 3 * 2  # M'_i = 2 for each of the 3 planned prompts
    assert ray_cluster.get(engine.get_num_unfinished_requests.remote()) == 0
    if not stream:
        return
    streamed = maker.make_experience_batch(samples)
    stream_metrics = maker.pop_metrics()
    # The dropped group's two candidates were streamed (keys "<its group id>/<index>") and then released: their
    # chunk tokens are the wasted ones. Its group id: the only dispatched group whose samples were not kept.
    kept_keys = {sink.keys[id(e)] for group in sink.groups.values() for e in group}
    dropped = {c["key"] for c in sink.chunks} - kept_keys
    assert len(dropped) == 2, (dropped, kept_keys)
    assert stream_metrics["darts/stream_token_wasted_tokens"] == sum(
        len(c["tokens"]) for c in sink.chunks if c["key"] in dropped
    )
    assert stream_metrics["darts/stream_token_released"] == 2 and _live_caches(ray_cluster, scorers) == 0
    plain = _maker(upstream.RemoteExperienceMaker, scorers, args, tokenizer).make_experience_batch(
        sink.reference(samples)
    )
    _assert_close(streamed, plain)


@pytest.mark.parametrize("stream", [False, True])
def test_dataloader_shorter_than_the_rollout_batch(ray_cluster, engine, tokenizer, scorers, stream):
    """--rollout.batch_size 4 over a dataset of 3 prompts: the step takes the 3 (upstream's rule: a partial batch is
    still processed, and the dataloader is exhausted), DARTS plans 3 groups, and streaming's last wave is short."""
    from openrlhf_darts import upstream
    from openrlhf_darts.trainer.experience_maker import DartsExperienceMaker

    args = copy.deepcopy(scorers.args)
    args.darts = NS(enable=True, selection="dual_end", num_long=1, stream=stream)
    args.rollout.batch_size, args.rollout.n_samples_per_prompt = 4, 2
    config = DartsConfig.from_args(args)
    generator = _generator(engine, tokenizer, PROMPTS[:3], [""] * 3, args)
    if stream:
        maker = _maker(DartsExperienceMaker, scorers, args, tokenizer, config=config)
        generator.group_sink = sink = RecordingSink(maker)
    kwargs = dict(temperature=1.0, max_new_tokens=16, max_len=512)
    samples, pass_rate, consumed, exhausted = generator.generate_samples(**kwargs)
    # Upstream's generator over the same 3-prompt dataloader returns the same counts and flags.
    theirs = upstream.SamplesGenerator(NS(args=args), _batches(PROMPTS[:3], [""] * 3, 4), None, tokenizer, [engine])
    their_samples, *their_rest = theirs.generate_samples(**kwargs)
    assert (len(samples), pass_rate, consumed, exhausted) == (len(their_samples), *their_rest) == (6, None, 3, True)
    assert [o.plan.num_keep for o in generator.last_outcomes] == [2, 2, 2]
    assert ray_cluster.get(engine.get_num_unfinished_requests.remote()) == 0
    if not stream:
        return
    # 6 samples, micro-batch 2 -> 3 micro-batches against the 8 a full batch would have; the maker still matches
    # upstream's non-streamed experiences on the same samples.
    streamed = maker.make_experience_batch(samples)
    assert [i for e in streamed for i in e.index] == list(range(6))
    plain = _maker(upstream.RemoteExperienceMaker, scorers, args, tokenizer).make_experience_batch(
        sink.reference(samples)
    )
    _assert_bit_equal(streamed, plain)


def test_max_len_cutting_a_token_streamed_sample_falls_back_to_the_plain_forward(
    ray_cluster, engine, tokenizer, scorers
):
    """A user's single-turn executor (tests/contract/assets/single_turn_agent.py) keeps an explicit max_new_tokens
    without shortening the prompt, so prompt + response can exceed --data.max_len; upstream's experience builder cuts
    the sample at max_len. Its chunks went out uncut while it decoded, so the token streamer must release them and
    score the sample with the plain forward."""
    from openrlhf_darts import upstream
    from openrlhf_darts.trainer.experience_maker import DartsExperienceMaker

    ray_cluster.get(engine.use_agent.remote(str(ASSETS / "single_turn_agent.py")))
    args = copy.deepcopy(scorers.args)
    args.darts = NS(
        enable=True, stream=True, stream_tokens=True, stream_chunk_tokens=4, min_candidates=2, max_candidates=2
    )
    args.rollout.batch_size, args.rollout.n_samples_per_prompt = 2, 2
    config = DartsConfig.from_args(args)
    prompts = PROMPTS[:2]
    prompt_tokens = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    # Every response has 16-24 tokens (min/max new tokens); max_len keeps at most 8 of them for the longer prompt.
    max_len = max(prompt_tokens) + 8
    generator = _generator(engine, tokenizer, prompts, [""] * 2, args)
    maker = _maker(DartsExperienceMaker, scorers, args, tokenizer, config=config)
    generator.group_sink = sink = RecordingSink(maker)
    samples, _, consumed, _ = generator.generate_samples(
        temperature=1.0, max_new_tokens=24, min_new_tokens=16, max_len=max_len
    )
    assert consumed == 2 and len(samples) == 4
    # Every sample was cut at max_len (its sequence is max_len long), after at least its first chunk was streamed.
    assert all(e.sequences.shape[1] == max_len for e in samples)
    streamed_keys = {c["key"] for c in sink.chunks}
    assert streamed_keys == {sink.keys[id(e)] for e in samples} and len(streamed_keys) == 4
    streamed = maker.make_experience_batch(samples)
    metrics = maker.pop_metrics()
    assert metrics["darts/stream_token_fallback"] == metrics["darts/stream_token_samples"] == 4
    assert metrics["darts/stream_token_finished"] == 0 and _live_caches(ray_cluster, scorers) == 0
    # Every row fell back to the plain forward, so the experiences are bit-equal to upstream's.
    plain = _maker(upstream.RemoteExperienceMaker, scorers, args, tokenizer).make_experience_batch(
        sink.reference(samples)
    )
    _assert_bit_equal(streamed, plain)
    assert ray_cluster.get(engine.get_num_unfinished_requests.remote()) == 0
