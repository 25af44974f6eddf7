"""Contract-tier fixtures: one real local Ray cluster and one real vLLM CPU engine (the DARTS actor) per test run.

The engine is created through OpenRLHF's own `create_vllm_engines`, with a reward function file that logs every call.
"""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

ASSETS = Path(__file__).parent / "assets"
TEST_STOP_TOKENS = 40  # ordinary token ids that stop the random tiny model (models/stopping.py): about 4% a step


@pytest.fixture(scope="session")
def reward_log(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("reward") / "calls.log"
    path.touch()
    return path


@pytest.fixture(scope="session")
def ray_cluster(reward_log):
    import ray

    from openrlhf_darts import compat

    env = compat.ray_runtime_env({"env_vars": {"DARTS_TEST_REWARD_LOG": str(reward_log)}})
    # Two logical GPUs: one for the session engine below, one for a module's own engine (test_early_abort.py starts
    # one that admits few requests at a time, test_failure_paths.py one that injects faults; each removes it with its
    # placement group afterwards). Upstream's engine placement group takes one logical CPU per engine, so three
    # logical CPUs leave room for the CPU scorers' placement-group bundles beside two engines (labels only: the
    # processes share the machine's cores either way).
    ray.init(num_cpus=3, num_gpus=2, runtime_env=env, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture(scope="session")
def stopping_model_path(tiny_model_path, tmp_path_factory) -> str:
    """The tiny model with 40 ordinary tokens added to generation_config's eos ids (`models.stopping`).

    vLLM turns generation_config eos ids into stop tokens for every request (also upstream's), so the random model
    stops at varied lengths (about 4% a step) instead of always running to the cap: groups get a real length spread.
    """
    from openrlhf_darts.models.stopping import write_stopping_copy

    path = tmp_path_factory.mktemp("models") / "tiny-stopping"
    return write_stopping_copy(tiny_model_path, path, TEST_STOP_TOKENS)


@pytest.fixture(scope="session")
def darts_engine(ray_cluster, stopping_model_path):
    """One DARTS engine actor (tiny model that stops at varied lengths), via upstream's create_vllm_engines."""
    from openrlhf_darts import upstream
    from openrlhf_darts.rollout.rollout_actor import DartsRolloutRayActor

    with upstream.rollout_actor_class(DartsRolloutRayActor):
        engines = upstream.create_vllm_engines(
            1, 1, stopping_model_path, 0, False, True, True, 512, None, 0.15, False, None,
            remote_rm_url=str(ASSETS / "counting_reward.py"),
        )
    ray_cluster.get(engines[0].get_num_unfinished_requests.remote())  # wait until the engine is up
    return engines[0]


def stop_token_ids(tokenizer, count: int = TEST_STOP_TOKENS) -> list[int]:
    """Ordinary tokens used as extra stop tokens, so the random tiny model stops at varied lengths (~count/1000 a step)."""
    from openrlhf_darts.models.stopping import stop_token_ids as last_token_ids

    return last_token_ids(len(tokenizer), count)


def rollout_args(
    n: int = 4,
    batch_size: int = 4,
    dynamic_filtering: bool = False,
    darts: dict | None = None,
    tail_batching: dict | None = None,
):
    """The slice of OpenRLHF's hierarchized args the samples generator reads (names as `train_ppo_ray` defines them)."""
    return SimpleNamespace(
        rollout=SimpleNamespace(n_samples_per_prompt=n, batch_size=batch_size, vllm_generate_batch_size=None),
        vllm=SimpleNamespace(enable_sleep=False),
        algo=SimpleNamespace(
            dynamic_filtering_enable=dynamic_filtering,
            dynamic_filtering_range=[0.0, 1.0],
            advantage=SimpleNamespace(is_correction_level="off"),
        ),
        train=SimpleNamespace(async_enable=False, partial_rollout_enable=False, colocate_all=False),
        darts=SimpleNamespace(**(darts or {})),
        tail_batching=SimpleNamespace(**(tail_batching or {})),
    )


def prompt_batches(prompts: list[str], batch_size: int):
    """A prompts dataloader in upstream's item format: (datasource, prompts, labels, images) per batch."""
    return [
        (["test"] * len(chunk), chunk, [""] * len(chunk), [None] * len(chunk))
        for chunk in (prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size))
    ]


def count_lines(path: Path) -> int:
    return len(path.read_text().splitlines())
