"""Upstream's model actor classes, for the backends to extend (part of the one door to OpenRLHF internals).

Importing this module runs the package `__init__` first (the version guard and the flash_attn fallback).
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
