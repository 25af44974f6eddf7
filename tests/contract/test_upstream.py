"""The upstream contract: everything `openrlhf_darts` relies on inside the installed OpenRLHF 0.11.2.

An OpenRLHF upgrade must fail here, in one place, before it fails somewhere inside a training run:
- every `upstream.CONTRACT` symbol exists and takes the parameters we call it with;
- both Ray classes we extend expose their unwrapped class (`__ray_actor_class__`);
- the source of every `upstream.BEHAVIOUR_PINNED` method still hashes to the value recorded below for 0.11.2;
- every upstream attribute we read (`upstream.ATTRIBUTES`) is still assigned by the method that sets it, upstream's
  `training_step` reads from `self` only what the CPU actors define, and the CPU replay buffer sets exactly the
  fields upstream's sets;
- the version guard accepts 0.11.2 and rejects anything else with the fix;
- `upstream.rollout_sampling_params` equals the `SamplingParams` upstream's real `_dispatch_prompts_to_vllm` sends,
  field by field (recorded by a real Ray actor standing in for an engine);
- upstream's executor returns the keys its experience builder reads, on a real vLLM CPU engine.
"""

import hashlib
import importlib.metadata
import inspect
import logging
import re
from types import SimpleNamespace

import pytest
from conftest import rollout_args

pytestmark = [pytest.mark.contract, pytest.mark.timeout(600)]

# sha256(inspect.getsource(method))[:16] for OpenRLHF 0.11.2. When one changes, read upstream's diff of that method
# and re-check what the comment beside its `BEHAVIOUR_PINNED` entry in openrlhf_darts/upstream/contract.py says we
# rely on (e.g. that `fit` computes timing/step_total before calling save_logs_and_checkpoints, that `train` imports
# PPOTrainer at call time, that `_dispatch_prompts_to_vllm` builds one SamplingParams the way
# `upstream.rollout_sampling_params` rebuilds it); fix our side if needed, then record the new hash here.
RECORDED_SOURCE_HASHES = {
    "openrlhf.trainer.ppo_utils.experience_maker.RemoteExperienceMaker.make_experience": "85db1fe426dec3e6",
    "openrlhf.trainer.ppo_utils.experience_maker.RemoteExperienceMaker._dispatch_forward": "4339cdd888efc46b",
    "openrlhf.trainer.ray.vllm_engine.RolloutRayActor.generate": "19f9f4c095525958",
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator._dispatch_prompts_to_vllm": "253997a0f8267a97",
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator.generate_samples": "7bf3f3e95631452b",
    "openrlhf.trainer.ppo_trainer.PPOTrainer.__init__": "6e163e479d0621f6",
    "openrlhf.trainer.ppo_trainer.BasePPOTrainer.__init__": "87e9cd9475b4b91f",
    "openrlhf.trainer.ppo_trainer.PPOTrainer.fit": "e73798a6309d024d",
    "openrlhf.trainer.ppo_trainer.BasePPOTrainer.save_logs_and_checkpoints": "0ea42915023820ea",
    "openrlhf.cli.train_ppo_ray.train": "b0047c66d0497de6",
    "openrlhf.utils.agent.SingleTurnAgentExecutor.__init__": "7053d9b0bb0384e9",
    "openrlhf.utils.agent.SingleTurnAgentExecutor._fetch_rewards_via_func": "d95c3341afe015a5",
    "openrlhf.trainer.ray.ppo_actor.ActorPPOTrainer.training_step": "ffa1acd4a5a21e37",
    "openrlhf.trainer.ray.ppo_actor.ActorPPOTrainer.ppo_train": "589ff8a5f9c34ad5",
    "openrlhf.trainer.ray.ppo_critic.CriticPPOTrainer.training_step": "228527bd6576b5c4",
    "openrlhf.trainer.ray.ppo_critic.CriticPPOTrainer.ppo_train": "fdf1296c6a9f9dab",
    "openrlhf.trainer.ppo_utils.replay_buffer.NaiveReplayBuffer.__init__": "4b675d5bdab2b09f",
    "openrlhf.models.actor.Actor.__init__": "34e1cf12a386dd51",
    "openrlhf.models.model.get_llm_for_sequence_regression": "48a7366f5618de9d",
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator._generate_vllm": "e31c2c4b19657950",
    # tail batching
    "openrlhf.trainer.ray.vllm_engine.RolloutRayActor.generate_responses": "cd8cc667de7c7c74",
    "openrlhf.trainer.ppo_utils.samples_generator._collect_prompt_batch": "d86482264c1559b7",
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator.generate_eval_samples": "d5b5ff27b1a7e157",
    # loud failures
    "openrlhf.utils.agent.SingleTurnAgentExecutor.execute": "4d19de59a801ceb1",
}

# Keys of one response dict from SingleTurnAgentExecutor.execute (openrlhf/utils/agent.py, 0.11.2), which
# `_process_response_into_experience` and the DARTS engine actor read.
EXECUTOR_KEYS = {
    "prompt",
    "label",
    "images",
    "mm_train_inputs",
    "observation_tokens",
    "action_ranges",
    "rollout_log_probs",
    "truncated",
    "reward",
    "scores",
    "extra_logs",
}


@pytest.fixture(scope="module")
def upstream():
    from openrlhf_darts import upstream

    return upstream


def _source_hash(obj) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


def test_contract_symbols_exist_with_our_parameters(upstream):
    problems = []
    for dotted, params in upstream.CONTRACT.items():
        try:
            target = upstream.resolve(dotted)
        except (ImportError, AttributeError) as error:
            problems.append(f"{dotted}: missing ({error})")
            continue
        found = inspect.signature(target).parameters
        missing = [p for p in params if p not in found]
        if missing:
            problems.append(f"{dotted}: no parameter(s) {missing}; it now takes {list(found)}")
    assert not problems, "OpenRLHF changed under openrlhf_darts/upstream/contract.py CONTRACT:\n" + "\n".join(problems)


def test_contract_is_not_empty_and_names_the_trainer_seams(upstream):
    # The trainer wiring relies on these; a CONTRACT that lost them would make the test above vacuous for them.
    for dotted in [
        "openrlhf.trainer.ppo_trainer.PPOTrainer.__init__",
        "openrlhf.trainer.ppo_trainer.PPOTrainer.save_logs_and_checkpoints",
        "openrlhf.trainer.ppo_trainer.PPOTrainer.restore_best_checkpoint_state",
        "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator.__init__",
        "openrlhf.trainer.ppo_utils.experience_maker.RemoteExperienceMaker.__init__",
        "openrlhf.trainer.ray.vllm_engine.create_vllm_engines",
        "openrlhf.utils.config.hierarchize",
        "openrlhf.cli.train_ppo_ray.train",
    ]:
        assert dotted in upstream.CONTRACT, dotted


def test_ray_actor_classes_expose_the_unwrapped_class(upstream):
    import ray
    from openrlhf.trainer import ppo_trainer
    from openrlhf.trainer.ray import vllm_engine

    for remote in (vllm_engine.RolloutRayActor, ppo_trainer.PPOTrainer):
        assert isinstance(remote, ray.actor.ActorClass), remote
        assert inspect.isclass(remote.__ray_actor_class__), remote
    assert upstream.RolloutRayActorBase is vllm_engine.RolloutRayActor.__ray_actor_class__
    assert upstream.ppo_trainer_base() is ppo_trainer.PPOTrainer.__ray_actor_class__
    assert upstream.ppo_trainer_base().__name__ == "PPOTrainer"


def test_behaviour_pinned_sources_match_0_11_2(upstream):
    assert set(upstream.BEHAVIOUR_PINNED) == set(RECORDED_SOURCE_HASHES), (
        "BEHAVIOUR_PINNED and RECORDED_SOURCE_HASHES differ: record the hash of every pinned method here "
        f"(pinned, unrecorded: {sorted(set(upstream.BEHAVIOUR_PINNED) - set(RECORDED_SOURCE_HASHES))}; "
        f"recorded, no longer pinned: {sorted(set(RECORDED_SOURCE_HASHES) - set(upstream.BEHAVIOUR_PINNED))})"
    )
    changed = {
        dotted: _source_hash(upstream.resolve(dotted))
        for dotted in upstream.BEHAVIOUR_PINNED
        if _source_hash(upstream.resolve(dotted)) != RECORDED_SOURCE_HASHES[dotted]
    }
    assert not changed, (
        f"upstream source changed for {sorted(changed)} (new hashes {changed}). Read the upstream diff of each, "
        "re-check what openrlhf_darts relies on (the comment beside its BEHAVIOUR_PINNED entry in "
        "upstream/contract.py), "
        "then update RECORDED_SOURCE_HASHES in this file"
    )


def _assigned_attributes(source: str) -> set[str]:
    """Names `x` of every `self.x = ...` / `self.x: T = ...` in a method's source."""
    return set(re.findall(r"^\s*self\.(\w+)\s*(?::[^=\n]+)?=(?!=)", source, flags=re.MULTILINE))


def test_upstream_attributes_are_still_assigned_where_we_expect(upstream):
    missing = []
    for dotted, setter in upstream.ATTRIBUTES.items():
        attribute = dotted.rsplit(".", 1)[1]
        if attribute not in _assigned_attributes(inspect.getsource(upstream.resolve(setter))):
            missing.append(f"{dotted}: no longer assigned in {setter}")
    assert not missing, "upstream attributes openrlhf_darts reads moved:\n" + "\n".join(missing)
    # The door functions read exactly the attributes listed (a door reading an unlisted attribute is unpinned).
    doors = inspect.getsource(upstream.training_dataloader_iter) + inspect.getsource(upstream.engine_llm)
    doors += inspect.getsource(upstream.reward_endpoints) + inspect.getsource(upstream.dataset_prompts)
    doors += inspect.getsource(upstream.engine_vllm_config)
    for name in ("_dataloader_iter", "llm", "reward_endpoints", "prompts", "vllm_config"):
        assert any(d.endswith(f".{name}") for d in upstream.ATTRIBUTES) and name in doors, name


def test_executor_logger_is_where_upstream_logs_a_failed_reward_call(upstream):
    # The engine actor names a failed reward call's cause from what the executor logged on this logger
    # (rollout_actor._ExecutorLog): the executor's module logger, enabled at info, logging the caught exception.
    from openrlhf.utils import agent

    logger = upstream.executor_logger()
    assert logger is agent.logger and logger.isEnabledFor(logging.INFO)
    source = inspect.getsource(upstream.resolve("openrlhf.utils.agent.SingleTurnAgentExecutor.execute"))
    logged = r"except Exception as e:\n\s+logger\.info\(f\"\[SingleTurnExecutor\] Failed to fetch reward from"
    assert re.search(logged, source)


def test_training_step_reads_only_what_the_cpu_actors_define(upstream):
    for dotted, attributes in upstream.TRAINING_STEP_ATTRIBUTES.items():
        source = inspect.getsource(upstream.resolve(dotted))
        read = set(re.findall(r"self\.(\w+)", source)) - {"args", "strategy", "replay_buffer"}
        assert read <= set(attributes), f"{dotted} now reads {sorted(read - set(attributes))} from self"
        asked = set(re.findall(r"self\.strategy\.(\w+)", source))
        assert asked <= set(upstream.TRAINING_STEP_STRATEGY), f"{dotted} now calls strategy.{sorted(asked)}"
    from openrlhf_darts.backends.cpu.strategy import CpuStrategy

    for name in upstream.TRAINING_STEP_STRATEGY:
        assert name in vars(CpuStrategy) or name in CpuStrategy.__init__.__code__.co_names, name


def test_cpu_replay_buffer_sets_the_fields_upstreams_sets(upstream):
    from openrlhf_darts.backends.cpu.base import CpuReplayBuffer

    source = inspect.getsource(upstream.resolve("openrlhf.trainer.ppo_utils.replay_buffer.NaiveReplayBuffer.__init__"))
    assert _assigned_attributes(source) == set(vars(CpuReplayBuffer(4)))


def test_version_guard(upstream, monkeypatch):
    assert upstream.check_version() == importlib.metadata.version("openrlhf") == "0.11.2"
    real_version = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata, "version", lambda name: "0.12.0" if name == "openrlhf" else real_version(name)
    )
    with pytest.raises(RuntimeError) as error:
        upstream.check_version()
    message = str(error.value)
    assert "openrlhf==0.12.0 is installed" in message
    assert "pip install --no-deps openrlhf==0.11.2" in message
    assert "tests/contract/test_upstream.py" in message


# ---- rollout_sampling_params against upstream's real dispatch -------------------------------------------------------


@pytest.fixture(scope="module")
def recording_engine(ray_cluster):
    """A real Ray actor with the two engine methods `_dispatch_prompts_to_vllm` calls; it records the kwargs."""

    @ray_cluster.remote(num_cpus=0)
    class RecordingEngine:
        def __init__(self):
            self.calls = []

        def get_num_unfinished_requests(self) -> int:
            return 0

        def generate_responses(self, **kwargs) -> list:
            self.calls.append(kwargs)
            return []

        def pop_calls(self) -> list:
            calls, self.calls = self.calls, []
            return calls

    engine = RecordingEngine.remote()
    yield engine
    ray_cluster.kill(engine)


@pytest.mark.parametrize(
    "correction, generate_kwargs",
    [
        ("off", {}),
        ("off", {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 64, "max_len": 300}),
        ("token", {"temperature": 1.0, "top_k": 20, "min_new_tokens": 3, "skip_special_tokens": True}),
        ("off", {"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 64}),  # what the benchmarks roll out with
    ],
)
def test_rollout_sampling_params_equal_upstream_dispatch(
    upstream, ray_cluster, recording_engine, correction, generate_kwargs
):
    args = rollout_args(n=3, batch_size=2)
    args.algo.advantage.is_correction_level = correction
    generator = upstream.SamplesGenerator(SimpleNamespace(args=args), None, None, None, [recording_engine])
    refs = generator._dispatch_prompts_to_vllm(["p0", "p1"], ["l0", "l1"], **generate_kwargs)
    ray_cluster.get(refs)
    calls = ray_cluster.get(recording_engine.pop_calls.remote())
    assert [c["prompt"] for c in calls] == ["p0", "p1"]

    ours = upstream.rollout_sampling_params(args, generate_kwargs)
    for call in calls:
        theirs = call["sampling_params"]
        assert type(theirs) is type(ours)
        differing = {
            field: (getattr(theirs, field), getattr(ours, field))
            for field in type(ours).__struct_fields__
            if getattr(theirs, field) != getattr(ours, field)
        }
        assert not differing, f"upstream vs rollout_sampling_params: {differing}"
        # The other per-call values the DARTS generator mirrors: max_len defaults to 2048, n from the args.
        assert call["max_length"] == generate_kwargs.get("max_len", 2048)
        assert call["num_samples"] == 3
    # logprobs=1 exactly when importance correction is on (the engines then run processed_logprobs).
    assert ours.logprobs == (None if correction == "off" else 1)

    if correction == "off" and set(generate_kwargs) == {"temperature", "top_p", "max_new_tokens"}:
        # The benchmarks' rollout parameters are the same builder's, plus their extra stop tokens.
        from openrlhf_darts.bench.rollout_engine import rollout_sampling_params

        bench = rollout_sampling_params(generate_kwargs["max_new_tokens"], generate_kwargs["temperature"], [7, 9])
        theirs = calls[0]["sampling_params"]
        differing = {f for f in type(ours).__struct_fields__ if getattr(theirs, f) != getattr(bench, f)}
        # vLLM derives _all_stop_token_ids from stop_token_ids (and the EOS id, set later by the engine).
        assert differing == {"stop_token_ids", "_all_stop_token_ids"}, differing
        assert bench.stop_token_ids == [7, 9] and {7, 9} <= set(bench._all_stop_token_ids)


def test_rollout_sampling_params_extra_fields_cannot_override_upstreams(upstream):
    args = rollout_args()
    params = upstream.rollout_sampling_params(args, {"max_new_tokens": 5}, stop_token_ids=[3])
    assert params.stop_token_ids == [3] and params.max_tokens == 5
    with pytest.raises(ValueError, match=r"\['max_tokens'\] are set from generate_kwargs"):
        upstream.rollout_sampling_params(args, {}, max_tokens=5)


def test_executor_output_keys_on_a_real_engine(ray_cluster, darts_engine, tokenizer):
    from vllm import SamplingParams

    # Upstream's generate_responses (inherited unchanged by the DARTS actor) runs upstream's executor.
    params = SamplingParams(temperature=1.0, max_tokens=8, min_tokens=1)
    responses = ray_cluster.get(
        darts_engine.generate_responses.remote(
            prompt="the cat runs",
            label="",
            sampling_params=params,
            max_length=256,
            hf_tokenizer=tokenizer,
            num_samples=2,
        )
    )
    assert len(responses) == 2
    for response in responses:
        assert set(response) == EXECUTOR_KEYS
        ((start, end),) = response["action_ranges"]
        # One action span: the response tokens after the prompt, at most max_tokens = 8 long.
        assert 1 <= end - start <= 8 and end == len(response["observation_tokens"])
        assert isinstance(response["truncated"], bool)
