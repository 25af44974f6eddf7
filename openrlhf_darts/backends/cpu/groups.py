"""Build upstream `RayActorGroup`s of CPU model actors without taking the cluster's logical GPU.

Upstream's `RayActorGroup` asks `num_gpus_per_actor` GPUs and as many CPUs per actor, and for more than one actor
per node it builds a placement group of `{"GPU": 1, "CPU": 1}` bundles. On a CPU cluster the only logical GPU belongs
to the vLLM engine, so the group is built with `num_gpus_per_actor=0` (the actors reserve nothing: Ray resources are
labels, and the processes share the cores) and, for data parallelism, our own placement group of tiny CPU-only
bundles, which `RayActorGroup` accepts through its `pg` argument. Everything else is upstream's group.
"""

from __future__ import annotations

import ray
from ray.util.placement_group import placement_group

from openrlhf_darts import upstream

ACTOR_KINDS = ("policy", "reference", "critic")
_BUNDLE_CPU = 0.01  # a placement-group bundle must hold some resource; the actor itself asks for none


def actor_class(kind: str):
    """The Ray actor class of one kind of CPU model actor."""
    if kind == "policy":
        from openrlhf_darts.backends.cpu.policy import CpuPolicyActor

        return CpuPolicyActor
    if kind == "reference":
        from openrlhf_darts.backends.cpu.reference import CpuReferenceActor

        return CpuReferenceActor
    if kind == "critic":
        from openrlhf_darts.backends.cpu.critic import CpuCriticActor

        return CpuCriticActor
    raise ValueError(f"kind={kind!r} is not one of {ACTOR_KINDS}")


def cpu_actor_group(kind: str, num_actors: int = 1):
    """An upstream `RayActorGroup` of `num_actors` data-parallel CPU actors of `kind` (policy, reference, critic)."""
    if not isinstance(num_actors, int) or num_actors < 1:
        raise ValueError(f"num_actors={num_actors!r} must be an integer >= 1")
    cls = actor_class(kind)
    pg = None
    if num_actors > 1:
        pg = placement_group([{"CPU": _BUNDLE_CPU} for _ in range(num_actors)], strategy="PACK")
        ray.get(pg.ready())
    return upstream.model_side().RayActorGroup(1, num_actors, cls, pg=pg, num_gpus_per_actor=0)
