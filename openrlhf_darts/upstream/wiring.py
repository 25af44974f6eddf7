"""Class rebinding, entry-point wiring and argparse patching: how DARTS's classes and flags get into upstream's own
`train_ppo_ray` and `train()` without forking them.

`rollout_actor_class` / `install_driver_patches` (the CLI), `install_chunked_model_actors` (GPU token streaming),
`train_classes` (the local mode) rebind module globals upstream reads at call time; `darts_flags_in_upstream_cli`
adds `--darts.*` and `--tail_batching.*` to upstream's parser.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib

from openrlhf.trainer.ray import vllm_engine as _vllm_engine

from openrlhf_darts.upstream.contract import LOCAL_SEAMS


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


@contextlib.contextmanager
def train_classes(**classes):
    """While active, upstream's `train_ppo_ray` (run as `__main__` afterwards) builds the given Ray classes.

    Keys: trainer, rollout, policy, reference, critic (see `LOCAL_SEAMS`). Every rebinding is undone on exit, so a
    second run in the same process starts from upstream's classes.
    """
    unknown = sorted(set(classes) - set(LOCAL_SEAMS))
    if unknown:
        raise ValueError(f"train_classes got unknown keys {unknown}; valid: {sorted(LOCAL_SEAMS)}")
    saved = []
    try:
        for key, cls in classes.items():
            module = importlib.import_module(LOCAL_SEAMS[key][0])
            saved.append((module, LOCAL_SEAMS[key][1], getattr(module, LOCAL_SEAMS[key][1])))
            setattr(module, LOCAL_SEAMS[key][1], cls)
        yield
    finally:
        for module, name, original in reversed(saved):
            setattr(module, name, original)


def install_chunked_model_actors() -> None:
    """Driver-only, for `--darts.stream_tokens` on GPUs: rebind upstream's policy / reference / critic actor classes in
    their defining modules to the chunk-forward subclasses, before `openrlhf.cli.train_ppo_ray` imports the names."""
    from openrlhf.trainer.ray import launcher, ppo_actor, ppo_critic

    from openrlhf_darts.backends import gpu_chunked

    launcher.ReferenceModelActor = gpu_chunked.DartsReferenceModelActor
    ppo_actor.PolicyModelActor = gpu_chunked.DartsPolicyModelActor
    ppo_critic.CriticModelActor = gpu_chunked.DartsCriticModelActor
