"""The model-side namespace: upstream's model actors, losses, strategy and actor groups, for the CPU backend
(`backends/cpu/`), the GPU chunk-forward actors (`backends/gpu_chunked.py`), the streaming experience maker and the
local trainer's evaluation.

Imported lazily inside each function: the engine actor imports this package too and must not pay for the model stack
it never uses.
"""

from __future__ import annotations


def gpu_model_actor_bases():
    """Upstream's DeepSpeed model actor classes, unwrapped from Ray, for `backends/gpu_chunked.py` to extend."""
    import types

    from openrlhf.trainer.ray import launcher, ppo_actor, ppo_critic

    return types.SimpleNamespace(
        reference=launcher.ReferenceModelActor.__ray_actor_class__,
        policy=ppo_actor.PolicyModelActor.__ray_actor_class__,
        critic=ppo_critic.CriticModelActor.__ray_actor_class__,
    )


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


def model_side_strategy(args):
    """Upstream's `DeepspeedStrategy` for `args` (`get_strategy`); the CPU actors use its `.args` and `is_rank_0`."""
    from openrlhf.utils.utils import get_strategy

    return get_strategy(args)


def fixed_kl_controller(coef: float):
    """Upstream's fixed KL controller, as `BasePPOTrainer` builds it without a KL target."""
    from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController

    return FixedKLController(coef)


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


def compute_eval_metrics(eval_dataloader, samples_list, n_samples_per_prompt: int) -> dict:
    """Upstream's `eval_*` metrics (pass@n, pass1, lengths per datasource) of evaluation samples, as its `evaluate`
    computes them; the local trainer's evaluation returns these so upstream's best-checkpoint logic is unchanged."""
    from openrlhf.trainer import ppo_trainer

    return ppo_trainer.compute_eval_metrics(eval_dataloader, samples_list, n_samples_per_prompt)
