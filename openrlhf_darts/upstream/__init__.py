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
import functools
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


def rollout_sampling_params(args, generate_kwargs: dict, **extra):
    """The `SamplingParams` upstream's `_dispatch_prompts_to_vllm` builds for a training rollout.

    Rebuilt here because upstream builds it inline; `tests/contract/test_upstream.py` compares the two field by field.
    `args` needs only `args.algo.advantage.is_correction_level`. `extra` adds fields upstream leaves at vLLM's
    defaults (the benchmarks' extra `stop_token_ids`); it cannot override one upstream sets.
    """
    from vllm import SamplingParams

    fields = dict(
        temperature=generate_kwargs.get("temperature", 1.0),
        top_p=generate_kwargs.get("top_p", 1.0),
        top_k=generate_kwargs.get("top_k", -1),
        max_tokens=generate_kwargs.get("max_new_tokens"),
        min_tokens=generate_kwargs.get("min_new_tokens", 1),
        skip_special_tokens=generate_kwargs.get("skip_special_tokens", False),
        logprobs=1 if args.algo.advantage.is_correction_level != "off" else None,
    )
    overlap = sorted(set(extra) & set(fields))
    if overlap:
        raise ValueError(
            f"rollout_sampling_params: {overlap} are set from generate_kwargs as upstream sets them; pass them there "
            "(temperature, top_p, top_k, max_new_tokens, min_new_tokens, skip_special_tokens), not as extra fields"
        )
    return SamplingParams(**fields, **extra)


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
    """While upstream's `train_ppo_ray` runs as `__main__`: add `--darts.*` and `--tail_batching.*` to its parser and
    validate after parsing.

    Upstream builds its parser under `if __name__ == "__main__":`, so nothing can import it. Two scoped hooks:
    `ArgumentParser.parse_args` gains the DARTS and tail-batching groups on its first call (so `--help` lists them), and
    `openrlhf.utils.config.hierarchize`, which the script imports at call time, hands the nested namespace to
    `on_parsed` before any upstream validation or Ray actor runs.
    """
    from openrlhf.utils import config as upstream_config

    from openrlhf_darts.config import add_darts_arguments
    from openrlhf_darts.tail_batching import add_tail_batching_arguments

    original_parse_args = argparse.ArgumentParser.parse_args
    original_hierarchize = upstream_config.hierarchize
    added: list[argparse.ArgumentParser] = []

    def parse_args(self, *a, **kw):
        if not added:
            add_darts_arguments(self)
            add_tail_batching_arguments(self)
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


# --- model-side symbols (CPU backend, streaming experience maker) ----------------------------------------------------
# Imported lazily: the engine actor imports this module too and must not pay for the model stack it never uses.


def model_side():
    """OpenRLHF's model-side pieces the CPU backend and the streaming maker reuse, as one namespace.

    `BaseModelActor` (launcher.py) gives the Ray-group protocol (`execute_batch`, `get_master_addr_port`, the
    MASTER_ADDR/RANK environment); `Actor` and the critic class are upstream's modules, loaded in fp32 on CPU;
    `PolicyLoss`, `ValueLoss`, `iter_grad_accum_global_norm` and the replay-buffer helpers are upstream's pure
    functions; `policy_training_step` / `critic_training_step` are upstream's per-micro-batch training steps.
    """
    import types

    from openrlhf.models import loss as _loss
    from openrlhf.models import model as _model
    from openrlhf.models import utils as _model_utils
    from openrlhf.models.actor import Actor
    from openrlhf.trainer.ppo_utils import experience as _experience
    from openrlhf.trainer.ppo_utils.replay_buffer import NaiveReplayBuffer
    from openrlhf.trainer.ray import launcher as _launcher
    from openrlhf.trainer.ray import ppo_actor as _ppo_actor
    from openrlhf.trainer.ray import ppo_critic as _ppo_critic
    from openrlhf.trainer.ray.vllm_worker_wrap import WorkerWrap
    from openrlhf.utils import loss_utils as _loss_utils
    from openrlhf.utils.deepspeed import deepspeed_utils as _deepspeed_utils

    return types.SimpleNamespace(
        BaseModelActor=_launcher.BaseModelActor,
        RayActorGroup=_launcher.RayActorGroup,
        Actor=Actor,
        critic_model_class=_model._get_critic_model,
        PolicyLoss=_loss.PolicyLoss,
        ValueLoss=_loss.ValueLoss,
        log_probs_from_logits=_model_utils.log_probs_from_logits,
        iter_grad_accum_global_norm=_loss_utils.iter_grad_accum_global_norm,
        NaiveReplayBuffer=NaiveReplayBuffer,
        make_experience_batch=_experience.make_experience_batch,
        WorkerWrap=WorkerWrap,
        get_optimizer_grouped_parameters=_deepspeed_utils.get_optimizer_grouped_parameters,
        # Upstream's own per-micro-batch training steps, called as plain functions with a CPU actor as `self`
        # (backends/cpu/policy.py, critic.py): the attributes they read are listed in TRAINING_STEP_ATTRIBUTES.
        policy_training_step=_ppo_actor.ActorPPOTrainer.training_step,
        critic_training_step=_ppo_critic.CriticPPOTrainer.training_step,
    )


# What upstream's `training_step` reads from `self` (ppo_actor.py / ppo_critic.py @0.11.2) besides `args`, `strategy`
# and `replay_buffer`, and what it asks of `self.strategy`. The CPU actors define every one of them (the strategy in
# backends/cpu/strategy.py); tests/contract/test_upstream.py checks that the sources read nothing else.
TRAINING_STEP_STRATEGY = ("backward", "optimizer_step", "get_grad_norm", "ring_attn_group", "moving_average")
TRAINING_STEP_ATTRIBUTES = {
    "openrlhf.trainer.ray.ppo_actor.ActorPPOTrainer.training_step": (
        "actor",
        "actor_loss_fn",
        "actor_optim",
        "actor_scheduler",
        "aux_loss",
        "ema_model",
        "ema_beta",
    ),
    "openrlhf.trainer.ray.ppo_critic.CriticPPOTrainer.training_step": (
        "critic",
        "critic_loss_fn",
        "critic_optim",
        "critic_scheduler",
        "aux_loss",
    ),
}


CONTRACT.update(
    {
        "openrlhf.trainer.ray.launcher.BaseModelActor.execute_batch": (
            "method_name",
            "all_data",
            "start_idx",
            "end_idx",
        ),
        "openrlhf.trainer.ray.launcher.RayActorGroup.__init__": (
            "num_nodes",
            "num_gpus_per_node",
            "ray_actor_type",
            "pg",
            "num_gpus_per_actor",
            "duplicate_actors",
        ),
        "openrlhf.trainer.ray.launcher.RayActorGroup.async_run_method_batch": ("method_name",),
        "openrlhf.trainer.ray.launcher.ReferenceModelActor.init_model_from_pretrained": ("strategy", "pretrain"),
        "openrlhf.trainer.ray.launcher.ReferenceModelActor.forward": (
            "sequences",
            "action_mask",
            "attention_mask",
            "return_output",
            "packed_seq_lens",
            "mm_train_inputs_list",
        ),
        "openrlhf.trainer.ray.ppo_actor.PolicyModelActor.init_model_from_pretrained": (
            "strategy",
            "pretrain",
            "max_steps",
            "vllm_engines",
        ),
        "openrlhf.trainer.ray.ppo_actor.PolicyModelActor.forward": (
            "sequences",
            "action_mask",
            "attention_mask",
            "packed_seq_lens",
            "mm_train_inputs_list",
        ),
        "openrlhf.trainer.ray.ppo_actor.PolicyModelActor.fit": ("kl_ctl",),
        "openrlhf.trainer.ray.ppo_actor.PolicyModelActor.append": ("experience",),
        "openrlhf.trainer.ray.ppo_actor.PolicyModelActor.broadcast_to_vllm": (),
        "openrlhf.trainer.ray.ppo_actor.PolicyModelActor.save_checkpoint": (
            "tag",
            "client_states",
            "metric_value",
            "metric_key",
        ),
        "openrlhf.trainer.ray.ppo_actor.PolicyModelActor.get_checkpoint_states": (),
        "openrlhf.trainer.ray.ppo_critic.CriticModelActor.init_model_from_pretrained": (
            "strategy",
            "pretrain",
            "max_steps",
        ),
        "openrlhf.trainer.ray.ppo_critic.CriticModelActor.forward": (
            "sequences",
            "action_mask",
            "attention_mask",
            "packed_seq_lens",
        ),
        "openrlhf.trainer.ray.ppo_critic.CriticModelActor.fit": (),
        "openrlhf.trainer.ray.ppo_critic.CriticModelActor.save_checkpoint": ("tag", "metric_value", "metric_key"),
        "openrlhf.models.loss.PolicyLoss.forward": ("log_probs", "old_log_probs", "advantages", "action_mask"),
        "openrlhf.models.loss.ValueLoss.forward": ("values", "old_values", "returns", "action_mask"),
        "openrlhf.utils.loss_utils.iter_grad_accum_global_norm": (
            "data_iter",
            "strategy",
            "accumulated_gradient",
            "mask_fn",
        ),
        "openrlhf.trainer.ppo_utils.experience_maker.RemoteExperienceMaker.split_rollout_samples": (
            "rollout_samples",
        ),
        "openrlhf.trainer.ppo_utils.experience_maker.RemoteExperienceMaker._dispatch_forward": (
            "group",
            "sync_condition",
        ),
        "openrlhf.utils.deepspeed.deepspeed_utils.get_optimizer_grouped_parameters": ("model", "weight_decay"),
        "openrlhf.trainer.ray.ppo_actor.ActorPPOTrainer.training_step": (
            "experience",
            "kl_ctl",
            "step",
            "loss_batch_info",
        ),
        "openrlhf.trainer.ray.ppo_critic.CriticPPOTrainer.training_step": ("experience", "step", "loss_batch_info"),
    }
)


# --- the trainer and the CLI (trainer/ppo_trainer.py, cli/train_ppo_ray.py) -----------------------------------------


@functools.cache
def ppo_trainer_base():
    """Upstream's unwrapped `PPOTrainer` class, which `DartsPPOTrainer` extends one level deep.

    Imported lazily (the trainer module pulls in DeepSpeed's strategy and the datasets, which engine actors never
    need) and cached: `DartsPPOTrainer` calls this before `install_driver_patches` rebinds `ppo_trainer.PPOTrainer`,
    so the cache holds upstream's class even after the rebinding.
    """
    from openrlhf.trainer import ppo_trainer

    return ppo_trainer.PPOTrainer.__ray_actor_class__


CONTRACT.update(
    {
        "openrlhf.trainer.ppo_trainer.PPOTrainer.__init__": (
            "pretrain",
            "strategy",
            "actor_model_group",
            "critic_model_group",
            "reward_model_group",
            "reference_model_group",
            "vllm_engines",
        ),
        "openrlhf.trainer.ppo_trainer.PPOTrainer.save_logs_and_checkpoints": (
            "global_step",
            "logs_dict",
            "client_states",
        ),
        "openrlhf.trainer.ppo_trainer.PPOTrainer.restore_best_checkpoint_state": ("checkpoint_states",),
        "openrlhf.trainer.ppo_utils.experience_maker.RemoteExperienceMaker.__init__": (
            "actor_model_group",
            "critic_model_group",
            "reward_model_group",
            "initial_model_group",
            "kl_controller",
            "strategy",
            "tokenizer",
        ),
        "openrlhf.cli.train_ppo_ray.train": ("args",),
    }
)
BEHAVIOUR_PINNED += (
    # Builds prompts_dataloader, eval_dataloader and samples_generator (whose tokenizer we reuse) before the base
    # constructor builds experience_maker from the attributes we pass again.
    "openrlhf.trainer.ppo_trainer.PPOTrainer.__init__",
    "openrlhf.trainer.ppo_trainer.BasePPOTrainer.__init__",
    # Per step: status gets timing/step_total, then save_logs_and_checkpoints(step, status, client_states); before
    # the first step restore_best_checkpoint_state(loaded states). train_step(samples, step) follows the rollout
    # directly and evaluate(step, **kwargs) comes after save_logs_and_checkpoints: local/trainer.py reads the engine
    # counters at these points.
    "openrlhf.trainer.ppo_trainer.PPOTrainer.fit",
    # Logs logs_dict and stores client_states in the actor checkpoint.
    "openrlhf.trainer.ppo_trainer.BasePPOTrainer.save_logs_and_checkpoints",
    # Imports PPOTrainer at call time and calls create_vllm_engines, which reads RolloutRayActor at call time: the two
    # rebinds of install_driver_patches take effect only because of this.
    "openrlhf.cli.train_ppo_ray.train",
    # Token streaming: make_experience sends the policy, critic and reference forwards through _dispatch_forward(group,
    # sync, sequences=, action_mask=, attention_mask=[, mm_train_inputs_list=]), one list item per micro-batch; the
    # maker's override routes groups with chunk-scored rows to darts_forward.
    "openrlhf.trainer.ppo_utils.experience_maker.RemoteExperienceMaker.make_experience",
    "openrlhf.trainer.ppo_utils.experience_maker.RemoteExperienceMaker._dispatch_forward",
)



# --- local CPU mode's evaluation and engine counters (local/trainer.py) --------------------------------------------
def compute_eval_metrics(eval_dataloader, samples_list, n_samples_per_prompt: int) -> dict:
    """Upstream's `eval_*` metrics (pass@n, pass1, lengths per datasource) of evaluation samples, as its `evaluate`
    computes them; the local trainer's evaluation returns these so upstream's best-checkpoint logic is unchanged."""
    from openrlhf.trainer import ppo_trainer

    return ppo_trainer.compute_eval_metrics(eval_dataloader, samples_list, n_samples_per_prompt)


CONTRACT.update(
    {
        "openrlhf.trainer.ppo_trainer.compute_eval_metrics": (
            "eval_dataloader",
            "samples_list",
            "n_samples_per_prompt",
        ),
        "openrlhf.trainer.ppo_trainer.PPOTrainer.fit": ("global_step",),
        "openrlhf.trainer.ppo_trainer.PPOTrainer.train_step": ("rollout_samples", "global_step"),
        "openrlhf.trainer.ppo_trainer.PPOTrainer.evaluate": ("global_step",),
        "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator.generate_eval_samples": (),
    }
)
BEHAVIOUR_PINNED += (
    # Runs the whole eval dataloader through _generate_vllm with the generate kwargs it is given (temperature,
    # n_samples_per_prompt) and no dynamic filtering, so the local evaluation can call it twice at two temperatures.
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator.generate_eval_samples",
)

from openrlhf_darts.upstream.model_actors import gpu_model_actor_bases  # noqa: E402,F401

# --- local CPU mode (openrlhf_darts.local) ---------------------------------------------------------------------------
# Module globals `openrlhf.cli.train_ppo_ray` binds when it runs as __main__ (its imports read them at that moment) or
# reads at call time (trainer, engine actor). Rebinding them is how the local mode runs upstream's own `train()`.
_LOCAL_SEAMS = {
    "trainer": ("openrlhf.trainer.ppo_trainer", "PPOTrainer"),
    "rollout": ("openrlhf.trainer.ray.vllm_engine", "RolloutRayActor"),
    "policy": ("openrlhf.trainer.ray.ppo_actor", "PolicyModelActor"),
    "reference": ("openrlhf.trainer.ray.launcher", "ReferenceModelActor"),
    "critic": ("openrlhf.trainer.ray.ppo_critic", "CriticModelActor"),
}
CONTRACT.update({f"{module}.{name}": () for module, name in _LOCAL_SEAMS.values() if name != "PPOTrainer"})


@contextlib.contextmanager
def train_classes(**classes):
    """While active, upstream's `train_ppo_ray` (run as `__main__` afterwards) builds the given Ray classes.

    Keys: trainer, rollout, policy, reference, critic (see `_LOCAL_SEAMS`). Every rebinding is undone on exit, so a
    second run in the same process starts from upstream's classes.
    """
    unknown = sorted(set(classes) - set(_LOCAL_SEAMS))
    if unknown:
        raise ValueError(f"train_classes got unknown keys {unknown}; valid: {sorted(_LOCAL_SEAMS)}")
    saved = []
    try:
        for key, cls in classes.items():
            module = importlib.import_module(_LOCAL_SEAMS[key][0])
            saved.append((module, _LOCAL_SEAMS[key][1], getattr(module, _LOCAL_SEAMS[key][1])))
            setattr(module, _LOCAL_SEAMS[key][1], cls)
        yield
    finally:
        for module, name, original in reversed(saved):
            setattr(module, name, original)


def effective_actors(group) -> int:
    """Data-parallel actors of an upstream `RayActorGroup`: its handles over ring/TP duplicates (the count its
    `async_run_method_batch` needs at least as many items as)."""
    return len(group._actor_handlers) // group.duplicate_actors


def actor_handles(group) -> list:
    """The Ray actor handles of an upstream `RayActorGroup`, in rank order (token streaming talks to each one)."""
    return list(group._actor_handlers)


def actor_class(group):
    """The plain Python class behind an upstream `RayActorGroup`'s Ray actor type."""
    return getattr(group.ray_actor_type, "__ray_actor_class__", group.ray_actor_type)


# Upstream's prompt-batch collector (module function of samples_generator.py): (prompts, labels, images, exhausted).
collect_prompt_batch = _samples_generator._collect_prompt_batch
CONTRACT["openrlhf.trainer.ppo_utils.samples_generator._collect_prompt_batch"] = ("dataloader_iter", "num_prompts")


def install_chunked_model_actors() -> None:
    """Driver-only, for `--darts.stream_tokens` on GPUs: rebind upstream's policy / reference / critic actor classes in
    their defining modules to the chunk-forward subclasses, before `openrlhf.cli.train_ppo_ray` imports the names."""
    from openrlhf.trainer.ray import launcher, ppo_actor, ppo_critic

    from openrlhf_darts.backends import gpu_chunked

    launcher.ReferenceModelActor = gpu_chunked.DartsReferenceModelActor
    ppo_actor.PolicyModelActor = gpu_chunked.DartsPolicyModelActor
    ppo_critic.CriticModelActor = gpu_chunked.DartsCriticModelActor


def model_side_strategy(args):
    """Upstream's `DeepspeedStrategy` for `args` (`get_strategy`); the CPU actors use its `.args` and `is_rank_0`."""
    from openrlhf.utils.utils import get_strategy

    return get_strategy(args)


def fixed_kl_controller(coef: float):
    """Upstream's fixed KL controller, as `BasePPOTrainer` builds it without a KL target."""
    from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController

    return FixedKLController(coef)


# --- reward function files (--reward.remote_url file.py) ------------------------------------------------------------
BEHAVIOUR_PINNED += (
    # A remote_url ending in .py is loaded with importlib.util.spec_from_file_location (module name "reward_func") and
    # its `reward_func` attribute becomes executor.reward_func: bench.tasks, bench.gym_tasks and
    # examples/scripts/reward_math.py are such files.
    "openrlhf.utils.agent.SingleTurnAgentExecutor.__init__",
    # Calls reward_func(queries, prompts, labels) with one sample per call, each through asyncio.to_thread, i.e. from
    # a worker thread (no signal.alarm there: examples/scripts/reward_math.py bounds math-verify's time otherwise).
    "openrlhf.utils.agent.SingleTurnAgentExecutor._fetch_rewards_via_func",
)
CONTRACT["openrlhf.utils.agent.SingleTurnAgentExecutor.__init__"] = ("remote_rm_url",)


def reward_file_executor(path: str):
    """Upstream's engine-side `SingleTurnAgentExecutor` for a reward file (it loads the file's `reward_func`)."""
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    if not str(path).endswith(".py"):
        raise ValueError(f"path={path!r} is not a .py file; upstream loads reward functions only from .py files")
    return SingleTurnAgentExecutor(remote_rm_url=str(path))


def score_like_engine(executor, queries: list[str], prompts: list[str], labels: list[str]) -> list[dict]:
    """Score samples exactly as an engine actor does: `executor.reward_func` called once per sample, concurrently, each
    from a worker thread (`_fetch_rewards_via_func`); one result dict per sample, exceptions propagate."""
    import asyncio

    return asyncio.run(executor._fetch_rewards_via_func(list(queries), list(prompts), list(labels)))


# --- upstream attributes we read or rebind, and the doors to them ---------------------------------------------------
# "module.Class.attribute" -> the method whose source assigns it (`self.<attribute> = ...`); the contract test reads
# that source, so a rename upstream fails there instead of as an AttributeError inside a run.
ATTRIBUTES = {
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator._dataloader_iter": (
        "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator.generate_samples"
    ),
    "openrlhf.trainer.ray.vllm_engine.RolloutRayActor.llm": (
        "openrlhf.trainer.ray.vllm_engine.RolloutRayActor.__init__"
    ),
    "openrlhf.utils.agent.SingleTurnAgentExecutor.reward_endpoints": (
        "openrlhf.utils.agent.SingleTurnAgentExecutor.__init__"
    ),
    "openrlhf.datasets.prompts_dataset.PromptDataset.prompts": (
        "openrlhf.datasets.prompts_dataset.PromptDataset.__init__"
    ),
    "vllm.v1.engine.async_llm.AsyncLLM.vllm_config": "vllm.v1.engine.async_llm.AsyncLLM.__init__",
}


def training_dataloader_iter(generator):
    """The iterator upstream's `generate_samples` draws training prompts from (`SamplesGenerator._dataloader_iter`);
    None before the first training rollout and after the dataloader is exhausted, as upstream itself reads it."""
    return getattr(generator, "_dataloader_iter", None)


def engine_llm(actor):
    """The vLLM `AsyncLLM` of an upstream engine actor (`RolloutRayActor.llm`)."""
    return actor.llm


def wrap_engine_llm(actor, wrapper) -> None:
    """Replace an engine actor's `llm` by `wrapper(llm)`; upstream's `generate`, weight-sync and sleep methods read
    the attribute at call time, so they all go through the wrapper."""
    actor.llm = wrapper(actor.llm)


def engine_vllm_config(actor):
    """The running engine's `VllmConfig` (scheduler and cache limits), from inside its actor."""
    return engine_llm(actor).vllm_config


def reward_endpoints(executor) -> list[str]:
    """The reward URLs or `.py` file of upstream's `SingleTurnAgentExecutor` (`--reward.remote_url`).

    [] when there are none, and for a user's executor (`--train.agent_func_path`) that does not extend
    `SingleTurnAgentExecutor`: such an executor computes its rewards its own way."""
    return list(getattr(executor, "reward_endpoints", None) or [])


def executor_logger() -> logging.Logger:
    """The logger of upstream's agent executors (`openrlhf.utils.agent.logger`). `SingleTurnAgentExecutor.execute`
    catches a failed reward call (the reward function's exception, the HTTP error) and only logs it there, at info
    level, before returning reward=None; the engine actor keeps those messages to name the cause when it fails the
    step (pinned below)."""
    from openrlhf.utils import agent

    return agent.logger


def dataset_prompts(dataloader) -> list[str]:
    """The prompt texts of the upstream `PromptDataset` behind a prompts dataloader, in dataset order."""
    return dataloader.dataset.prompts


CONTRACT["openrlhf.trainer.ppo_trainer.BasePPOTrainer.train_step"] = ("rollout_samples", "global_step")

# --- upstream code mirrored in our tree -----------------------------------------------------------------------------
# Each of these has a copy (or a rewrite that must stay equivalent) in openrlhf_darts, marked "mirrors <file>@0.11.2"
# beside it. A source change upstream fails tests/contract/test_upstream.py; re-check the copy, then record the hash.
BEHAVIOUR_PINNED += (
    # backends/cpu/policy.py, critic.py: upstream's training_step runs as is on the CPU actors (a CPU strategy
    # stands in for DeepSpeed's engine), and ppo_train's status reduction is mirrored in backends/cpu/ppo_status.py.
    "openrlhf.trainer.ray.ppo_actor.ActorPPOTrainer.training_step",
    "openrlhf.trainer.ray.ppo_actor.ActorPPOTrainer.ppo_train",
    "openrlhf.trainer.ray.ppo_critic.CriticPPOTrainer.training_step",
    "openrlhf.trainer.ray.ppo_critic.CriticPPOTrainer.ppo_train",
    # backends/cpu/base.py CpuReplayBuffer.__init__ sets the same fields without asking CUDA for a device.
    "openrlhf.trainer.ppo_utils.replay_buffer.NaiveReplayBuffer.__init__",
    # backends/cpu/base.py load_causal_lm / load_critic: fp32 loading with upstream's MoE router flag, use_cache off,
    # value-head precedence and fresh value head.
    "openrlhf.models.actor.Actor.__init__",
    "openrlhf.models.model.get_llm_for_sequence_regression",
    # trainer/samples_generator.py _generate_streaming: upstream's collection loop and dynamic-filtering rule, with
    # each accepted group handed to the streaming experience maker.
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator._generate_vllm",
)

# --- tail batching, the comparison arm (openrlhf_darts/tail_batching.py, trainer/ and rollout/tail_*.py) -------------
BEHAVIOUR_PINNED += (
    # generate_tail_group runs what generate_responses runs (num_samples executor.execute calls, llm_engine=self), as
    # tasks it can stop.
    "openrlhf.trainer.ray.vllm_engine.RolloutRayActor.generate_responses",
    # The tail-batching generator keeps _generate_vllm's dynamic-filtering rule: a group is dropped only when every
    # sample has a score and their mean is not strictly inside the range, and each dropped group gets one replacement.
    # (SamplesGenerator._generate_vllm is pinned above, for the streaming collector; tail batching relies on it too.)
    # exhausted=True only when the iterator raised StopIteration while collecting (the epoch's end).
    "openrlhf.trainer.ppo_utils.samples_generator._collect_prompt_batch",
)

# --- loud failures (rollout/rollout_actor.py) ----------------------------------------------------------------
BEHAVIOUR_PINNED += (
    # rollout/rollout_actor.py: the executor calls llm_engine.generate once, then the reward; a failed reward call is
    # caught, logged on `executor_logger()` at info level and returned as reward=None (the actor then fails the
    # step with that message).
    "openrlhf.utils.agent.SingleTurnAgentExecutor.execute",
)
