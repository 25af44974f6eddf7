"""Upstream's DeepSpeed model actors plus the token-streaming chunk methods (`--darts.stream_tokens`, GPU clusters).

Each class extends upstream's Ray actor class one level deep (`X.__ray_actor_class__`), calls upstream's
`init_model_from_pretrained` unchanged and then builds a `ChunkCache` over the prepared model's Hugging Face module
(`DeepSpeedEngine.module`; whole parameters on every rank: `DartsConfig.from_args` rejects ZeRO-3, whose gathers are
collectives that a chunk forward on one rank would enter alone, docs/streaming.md). The chunk methods are the
backend-neutral ones (`scoring/chunk_cache.py`): `forward_chunk`, `finish_chunks`, `release_chunks`, `num_live_caches`,
`chunk_cache_stats`.

`upstream.install_chunked_model_actors()` rebinds these classes in their defining modules before
`openrlhf.cli.train_ppo_ray` imports them. Packing and ring attention are not supported on the chunk path.
"""

from __future__ import annotations

import ray
import torch

from openrlhf_darts.scoring.chunk_cache import (
    ChunkCache,
    ChunkScoringMixin,
    causal_lm_step,
    critic_step,
    max_live_caches,
)
from openrlhf_darts.upstream.model_actors import gpu_model_actor_bases

_BASES = gpu_model_actor_bases()


def _hf_module(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face module inside a DeepSpeed engine (or the module itself)."""
    return getattr(model, "module", model)


def _check_chunkable(args) -> None:
    if args.ds.packing_samples or args.ds.ring_attn_size > 1:
        raise ValueError(
            "--darts.stream_tokens scores chunks with a per-sample KV cache, which packed samples and ring attention "
            "do not support; drop --ds.packing_samples / --ds.ring_attn_size or --darts.stream_tokens"
        )


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())


class DartsReferenceModelActorImpl(ChunkScoringMixin, _BASES.reference):
    def init_model_from_pretrained(self, strategy, pretrain):
        _check_chunkable(strategy.args)
        super().init_model_from_pretrained(strategy, pretrain)
        step = causal_lm_step(_hf_module(self.model.model), self.model.temperature)
        self.chunks = ChunkCache(step, "logprobs", max_live_caches(strategy.args), device=_device())


class DartsPolicyModelActorImpl(ChunkScoringMixin, _BASES.policy):
    chunk_module_attr = "actor"  # old log-probs in eval mode (no dropout), as upstream's forward

    def init_model_from_pretrained(self, strategy, pretrain, max_steps=None, vllm_engines=None):
        _check_chunkable(strategy.args)
        super().init_model_from_pretrained(strategy, pretrain, max_steps, vllm_engines)
        step = causal_lm_step(_hf_module(self.actor.model), self.actor.temperature)
        self.chunks = ChunkCache(step, "logprobs", max_live_caches(strategy.args), device=_device())


class DartsCriticModelActorImpl(ChunkScoringMixin, _BASES.critic):
    chunk_module_attr = "critic"

    def init_model_from_pretrained(self, strategy, pretrain, max_steps):
        _check_chunkable(strategy.args)
        super().init_model_from_pretrained(strategy, pretrain, max_steps)
        step = critic_step(_hf_module(self.critic))
        self.chunks = ChunkCache(step, "values", max_live_caches(strategy.args), device=_device())


DartsReferenceModelActor = ray.remote(num_gpus=1)(DartsReferenceModelActorImpl)
DartsPolicyModelActor = ray.remote(num_gpus=1)(DartsPolicyModelActorImpl)
DartsCriticModelActor = ray.remote(num_gpus=1)(DartsCriticModelActorImpl)
