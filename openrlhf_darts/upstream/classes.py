"""The upstream classes and functions we extend or call directly (DARTS's engine actor, samples generator,
experience maker, trainer), and the per-step helpers on them: what `rollout/` and `trainer/` subclass.

Ray actor classes are extended one level deep from the unwrapped class and re-wrapped with ray.remote.
"""

from __future__ import annotations

import functools

from openrlhf.trainer.ppo_utils import experience_maker as _experience_maker
from openrlhf.trainer.ppo_utils import samples_generator as _samples_generator
from openrlhf.trainer.ppo_utils.experience import Experience  # noqa: F401
from openrlhf.trainer.ray import vllm_engine as _vllm_engine

RolloutRayActorBase = _vllm_engine.RolloutRayActor.__ray_actor_class__
SamplesGenerator = _samples_generator.SamplesGenerator
RemoteExperienceMaker = _experience_maker.RemoteExperienceMaker
create_vllm_engines = _vllm_engine.create_vllm_engines
batch_vllm_engine_call = _vllm_engine.batch_vllm_engine_call

# Upstream's prompt-batch collector (module function of samples_generator.py): (prompts, labels, images, exhausted).
collect_prompt_batch = _samples_generator._collect_prompt_batch


@functools.cache
def ppo_trainer_base():
    """Upstream's unwrapped `PPOTrainer` class, which `DartsPPOTrainer` extends one level deep.

    Imported lazily (the trainer module pulls in DeepSpeed's strategy and the datasets, which engine actors never
    need) and cached: `DartsPPOTrainer` calls this before `install_driver_patches` rebinds `ppo_trainer.PPOTrainer`,
    so the cache holds upstream's class even after the rebinding.
    """
    from openrlhf.trainer import ppo_trainer

    return ppo_trainer.PPOTrainer.__ray_actor_class__
