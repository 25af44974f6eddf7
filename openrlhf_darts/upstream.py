"""The one door to OpenRLHF internals.

Everything this package relies on inside OpenRLHF 0.11.2 is named here: the version guard, the classes we extend, the
module globals we rebind in the driver, and the CLI hooks that register `--darts.*`. `tests/contract/test_upstream.py`
asserts every symbol and signature listed in `CONTRACT`, so an upgrade fails loudly in one place.

Importing this module imports OpenRLHF (after the CPU flash_attn fallback is installed where needed); importing
`openrlhf_darts` or `openrlhf_darts.config` does not.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import logging

from openrlhf_darts import compat

SUPPORTED_OPENRLHF = ("0.11.2",)
logger = logging.getLogger(__name__)


def check_version() -> str:
    """Return the installed OpenRLHF version, or raise if it is outside the tested range."""
    found = importlib.metadata.version("openrlhf")
    if found not in SUPPORTED_OPENRLHF:
        raise RuntimeError(
            f"openrlhf=={found} is installed but openrlhf_darts is tested against {SUPPORTED_OPENRLHF}; install "
            f"openrlhf=={SUPPORTED_OPENRLHF[-1]} (pip install --no-deps openrlhf=={SUPPORTED_OPENRLHF[-1]}) or run "
            "tests/contract/test_upstream.py against the new version and extend SUPPORTED_OPENRLHF"
        )
    return found


check_version()
compat.install()

from openrlhf.trainer.ppo_utils import experience_maker as _experience_maker  # noqa: E402
from openrlhf.trainer.ppo_utils import samples_generator as _samples_generator  # noqa: E402
from openrlhf.trainer.ppo_utils.experience import Experience  # noqa: E402,F401
from openrlhf.trainer.ray import vllm_engine as _vllm_engine  # noqa: E402

# --- the classes we extend ------------------------------------------------------------------------------------------
# Ray actor classes are extended one level deep from the unwrapped class and re-wrapped with ray.remote.
RolloutRayActorBase = _vllm_engine.RolloutRayActor.__ray_actor_class__
SamplesGenerator = _samples_generator.SamplesGenerator
RemoteExperienceMaker = _experience_maker.RemoteExperienceMaker
create_vllm_engines = _vllm_engine.create_vllm_engines
batch_vllm_engine_call = _vllm_engine.batch_vllm_engine_call

# Symbols, with the parameters we call them with, that must exist in the installed OpenRLHF.
CONTRACT: dict[str, tuple[str, ...]] = {
    "openrlhf.trainer.ray.vllm_engine.RolloutRayActor.generate": ("prompt_token_ids", "sampling_params"),
    "openrlhf.trainer.ray.vllm_engine.RolloutRayActor.generate_responses": (
        "prompt",
        "label",
        "sampling_params",
        "max_length",
        "hf_tokenizer",
        "num_samples",
        "images",
    ),
    "openrlhf.trainer.ray.vllm_engine.RolloutRayActor.get_num_unfinished_requests": (),
    "openrlhf.trainer.ray.vllm_engine.create_vllm_engines": (
        "num_engines",
        "tensor_parallel_size",
        "pretrain",
        "seed",
        "full_determinism",
        "enable_prefix_caching",
        "enforce_eager",
        "max_model_len",
        "shared_pg",
        "gpu_memory_utilization",
        "vllm_enable_sleep",
        "logprobs_mode",
        "agent_func_path",
        "remote_rm_url",
    ),
    "openrlhf.utils.agent.SingleTurnAgentExecutor.execute": (
        "prompt",
        "label",
        "sampling_params",
        "max_length",
        "hf_tokenizer",
        "llm_engine",
        "images",
    ),
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator.__init__": (
        "strategy",
        "prompts_dataloader",
        "eval_dataloader",
        "tokenizer",
        "vllm_engines",
    ),
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator.generate_samples": (),
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator._generate_vllm": (
        "dataloader_iter",
        "num_prompts",
        "dynamic_filtering",
    ),
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator._dispatch_prompts_to_vllm": (
        "prompts",
        "labels",
        "images",
    ),
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator._process_response_into_experience": ("response",),
    "openrlhf.trainer.ppo_utils.experience_maker.RemoteExperienceMaker.make_experience_batch": ("rollout_samples",),
    "openrlhf.trainer.ppo_utils.experience_maker.RemoteExperienceMaker.make_experience": ("samples_list",),
    "openrlhf.trainer.ppo_utils.experience_maker.RemoteExperienceMaker.compute_advantages_and_returns": (
        "experiences",
    ),
    "openrlhf.utils.config.hierarchize": ("args",),
}

# Upstream methods whose *behaviour* we rely on; a source change must be reviewed (tests/contract/test_upstream.py).
BEHAVIOUR_PINNED = (
    "openrlhf.trainer.ray.vllm_engine.RolloutRayActor.generate",
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator._dispatch_prompts_to_vllm",
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator.generate_samples",
)


def resolve(dotted: str):
    """The object a dotted path names, unwrapping Ray actor classes on the way."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
            obj = getattr(obj, "__ray_actor_class__", obj)
        return obj
    raise ImportError(dotted)


def rollout_sampling_params(args, generate_kwargs: dict):
    """The `SamplingParams` upstream's `_dispatch_prompts_to_vllm` builds for a training rollout.

    Rebuilt here because upstream builds it inline; `tests/contract/test_upstream.py` compares the two field by field.
    """
    from vllm import SamplingParams

    return SamplingParams(
        temperature=generate_kwargs.get("temperature", 1.0),
        top_p=generate_kwargs.get("top_p", 1.0),
        top_k=generate_kwargs.get("top_k", -1),
        max_tokens=generate_kwargs.get("max_new_tokens"),
        min_tokens=generate_kwargs.get("min_new_tokens", 1),
        skip_special_tokens=generate_kwargs.get("skip_special_tokens", False),
        logprobs=1 if args.algo.advantage.is_correction_level != "off" else None,
    )


@contextlib.contextmanager
def rollout_actor_class(actor_cls):
    """Make upstream's `create_vllm_engines` build `actor_cls` (a `ray.remote` class) instead of `RolloutRayActor`.

    `create_vllm_engines` reads the module global at call time and takes no class argument, so this rebinding is the
    seam. Restored on exit; the CLI keeps it for the whole run instead (see `install_driver_patches`).
    """
    original = _vllm_engine.RolloutRayActor
    _vllm_engine.RolloutRayActor = actor_cls
    try:
        yield
    finally:
        _vllm_engine.RolloutRayActor = original


def install_driver_patches(trainer_cls, actor_cls) -> None:
    """Rebind the two Ray classes upstream's `train()` instantiates itself. Driver-only: workers never see this."""
    from openrlhf.trainer import ppo_trainer

    _vllm_engine.RolloutRayActor = actor_cls
    ppo_trainer.PPOTrainer = trainer_cls


@contextlib.contextmanager
def darts_flags_in_upstream_cli(on_parsed):
    """While upstream's `train_ppo_ray` runs as `__main__`: add `--darts.*` to its parser and validate after parsing.

    Upstream builds its parser under `if __name__ == "__main__":`, so nothing can import it. Two scoped hooks:
    `ArgumentParser.parse_args` gains the DARTS group on its first call (so `--help` lists it), and
    `openrlhf.utils.config.hierarchize`, which the script imports at call time, hands the nested namespace to
    `on_parsed` before any upstream validation or Ray actor runs.
    """
    from openrlhf.utils import config as upstream_config

    from openrlhf_darts.config import add_darts_arguments

    original_parse_args = argparse.ArgumentParser.parse_args
    original_hierarchize = upstream_config.hierarchize
    added: list[argparse.ArgumentParser] = []

    def parse_args(self, *a, **kw):
        if not added:
            add_darts_arguments(self)
            added.append(self)
        return original_parse_args(self, *a, **kw)

    def hierarchize(args):
        nested = original_hierarchize(args)
        if added:
            on_parsed(nested)
        return nested

    argparse.ArgumentParser.parse_args = parse_args
    upstream_config.hierarchize = hierarchize
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original_parse_args
        upstream_config.hierarchize = original_hierarchize
