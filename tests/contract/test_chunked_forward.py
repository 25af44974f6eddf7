"""Token-level streaming on the scorer side: chunked forwards with a per-sample KV cache equal one full-sequence forward
(fp32, atol 1e-5) on the real tiny Qwen2, through upstream's Actor / critic classes and through a real Ray actor."""

import pytest
from test_cpu_actors import make_strategy, train_args

pytestmark = [pytest.mark.contract, pytest.mark.timeout(600)]

PROMPT = [3, 17, 42, 99, 7, 250]


def _sequence(length: int = 23, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.tensor(PROMPT), torch.randint(5, 1000, (length,), generator=g)])[None]  # (1, 6 + 23)


def _feed(cache, sample_id, seq, spans):
    for start, end in spans:
        cache.forward_chunk(sample_id, seq[0, start:end].tolist())


def _spans(prompt: int, total: int, chunk: int):
    from openrlhf_darts.core.streaming import chunk_spans

    return chunk_spans(prompt, total - prompt, 0, chunk, finished=True)


@pytest.mark.parametrize("chunk", [1, 4, 100])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_log_probs_equal_full_forward(stopping_model_path, tmp_path, chunk, temperature):
    import torch

    from openrlhf_darts.backends.cpu.base import load_causal_lm
    from openrlhf_darts.scoring.chunk_cache import ChunkCache, causal_lm_step

    args = train_args(stopping_model_path, str(tmp_path), **{"rollout.temperature": temperature})
    actor = load_causal_lm(stopping_model_path, args).eval()
    seq = _sequence()
    num_actions = seq.shape[1] - len(PROMPT)  # 23 response tokens
    mask = torch.ones(1, num_actions, dtype=torch.bool)
    mask[0, -3:] = False  # the last 3 positions are padding-like: upstream zeroes them, so must the chunked path
    with torch.no_grad():
        full = actor(seq, mask, torch.ones_like(seq))  # upstream's Actor.forward, (1, 23)
    cache = ChunkCache(causal_lm_step(actor.model, actor.temperature), "logprobs", max_live=2)
    spans = _spans(len(PROMPT), seq.shape[1], chunk)
    # chunk 1 -> the prompt + 1 token, then 22 single tokens; chunk 100 -> one span holding everything.
    assert len(spans) == {1: 23, 4: 6, 100: 1}[chunk]
    _feed(cache, "s0", seq, spans)
    assert len(cache) == 1
    chunked = cache.finish("s0", mask)
    assert len(cache) == 0
    assert chunked.shape == full.shape
    assert torch.allclose(chunked, full, atol=1e-5), (chunked - full).abs().max()


@pytest.mark.parametrize("chunk", [1, 5])
def test_chunked_values_equal_full_critic_forward(stopping_model_path, tmp_path, chunk):
    import torch

    from openrlhf_darts.backends.cpu.base import load_critic
    from openrlhf_darts.scoring.chunk_cache import ChunkCache, critic_step

    args = train_args(stopping_model_path, str(tmp_path))
    torch.manual_seed(0)
    critic = load_critic(stopping_model_path, args).eval()
    seq = _sequence(seed=1)
    mask = torch.ones(1, seq.shape[1] - len(PROMPT), dtype=torch.bool)
    with torch.no_grad():
        full = critic(seq, mask, torch.ones_like(seq))
    cache = ChunkCache(critic_step(critic), "values", max_live=1)
    _feed(cache, "v", seq, _spans(len(PROMPT), seq.shape[1], chunk))
    chunked = cache.finish("v", mask)
    assert torch.allclose(chunked, full, atol=1e-5), (chunked - full).abs().max()


def test_cache_cap_and_release(stopping_model_path, tmp_path):
    import torch

    from openrlhf_darts.backends.cpu.base import load_causal_lm
    from openrlhf_darts.scoring.chunk_cache import ChunkCache, causal_lm_step

    actor = load_causal_lm(stopping_model_path, train_args(stopping_model_path, str(tmp_path))).eval()
    cache = ChunkCache(causal_lm_step(actor.model, 1.0), "logprobs", max_live=2)
    seq = _sequence()
    cache.forward_chunk("a", seq[0, :8].tolist())
    out = cache.forward_chunk("b", seq[0, :8].tolist())
    assert out.shape == (7,)  # first chunk of 8 tokens: 7 next-token log-probs
    # Tiny model: 2 layers x (K + V) x 1 KV head x 8 tokens x head dim 32 x 4 bytes = 4096 bytes per sample.
    assert cache.cached_bytes() == 2 * 4096
    with pytest.raises(RuntimeError, match="max_live=2"):
        cache.forward_chunk("c", seq[0, :8].tolist())
    assert cache.release(["a", "zzz"]) == 1  # abort of a: freed; an unknown id is not an error
    assert cache.live_ids() == ["b"]
    assert cache.release(["b"]) == 1 and len(cache) == 0 and cache.cached_bytes() == 0
    assert cache.peak_bytes == 2 * 4096 and cache.peak_live == 2
    with pytest.raises(KeyError, match="'a'"):
        cache.finish("a", torch.ones(1, 3))


def test_reference_actor_chunk_methods_over_ray(ray_cluster, stopping_model_path, tmp_path):
    """The remote chunk methods of the CPU reference actor: chunks == forward; abort/drop release; live count."""
    import torch

    from openrlhf_darts.backends.cpu.groups import cpu_actor_group

    args = train_args(stopping_model_path, str(tmp_path))
    group = cpu_actor_group("reference")
    ray_cluster.get(group.async_init_model_from_pretrained(make_strategy(args), stopping_model_path))
    (actor,) = group._actor_handlers
    seq = _sequence(seed=2)
    mask = torch.ones(1, seq.shape[1] - len(PROMPT), dtype=torch.bool)
    (full,) = ray_cluster.get(
        group.async_run_method_batch(
            "forward", sequences=[seq], action_mask=[mask], attention_mask=[torch.ones_like(seq)]
        )
    )[0]
    for start, end in _spans(len(PROMPT), seq.shape[1], 7):
        ray_cluster.get(actor.forward_chunk.remote("kept", seq[0, start:end].tolist()))
    ray_cluster.get(actor.forward_chunk.remote("aborted", seq[0, :10].tolist()))
    ray_cluster.get(actor.forward_chunk.remote("dropped", seq[0, :12].tolist()))
    assert ray_cluster.get(actor.num_live_caches.remote()) == 3
    chunked = ray_cluster.get(actor.finish_chunks.remote("kept", mask))
    assert torch.allclose(chunked, full, atol=1e-5)
    assert ray_cluster.get(actor.release_chunks.remote(["aborted", "dropped"])) == 2
    stats = ray_cluster.get(actor.chunk_cache_stats.remote())
    assert stats["live"] == 0 and stats["bytes"] == 0 and stats["peak_live"] == 3

    # darts_forward: a right-padded micro-batch of a long and a short sample, the long row's scores from its chunks.
    short = _sequence(length=9, seed=3)
    width = seq.shape[1]
    batch = torch.full((2, width), 3, dtype=torch.long)
    batch[0], batch[1, : short.shape[1]] = seq[0], short[0]
    attention = torch.zeros(2, width, dtype=torch.long)
    attention[0], attention[1, : short.shape[1]] = 1, 1
    actions = torch.zeros(2, width - 1, dtype=torch.bool)
    actions[0, len(PROMPT) - 1 :] = True
    actions[1, len(PROMPT) - 1 : short.shape[1] - 1] = True
    (plain,) = ray_cluster.get(
        group.async_run_method_batch("forward", sequences=[batch], action_mask=[actions], attention_mask=[attention])
    )[0]
    for start, end in _spans(len(PROMPT), width, 5):
        ray_cluster.get(actor.forward_chunk.remote("long", batch[0, start:end].tolist()))
    long_scores = ray_cluster.get(actor.finish_chunks.remote("long", actions[:1]))
    (mixed,) = ray_cluster.get(
        group.async_run_method_batch(
            "darts_forward",
            sequences=[batch],
            action_mask=[actions],
            attention_mask=[attention],
            darts_precomputed=[[long_scores, None]],
        )
    )[0]
    assert mixed.shape == plain.shape and torch.allclose(mixed, plain, atol=1e-5), (mixed - plain).abs().max()
    assert torch.equal(mixed[0], long_scores[0])  # row 0 was not recomputed
    with pytest.raises(Exception, match="2 precomputed entries for a micro-batch of 1"):
        ray_cluster.get(actor.darts_forward.remote(seq, mask, torch.ones_like(seq), [None, None]))
    ray_cluster.kill(actor)


def test_gpu_chunked_classes_extend_upstream_and_rebind(flash_attn_fallback):
    """The GPU classes (importable on CPU) are upstream's DeepSpeed actors plus the chunk methods, and
    `install_chunked_model_actors` rebinds upstream's names in their defining modules (restored afterwards)."""
    from openrlhf.trainer.ray import launcher, ppo_actor, ppo_critic

    from openrlhf_darts import upstream
    from openrlhf_darts.backends import gpu_chunked

    bases = upstream.gpu_model_actor_bases()
    pairs = [
        (gpu_chunked.DartsReferenceModelActorImpl, bases.reference),
        (gpu_chunked.DartsPolicyModelActorImpl, bases.policy),
        (gpu_chunked.DartsCriticModelActorImpl, bases.critic),
    ]
    for impl, base in pairs:
        assert issubclass(impl, base)
        for name in ("forward_chunk", "finish_chunks", "release_chunks", "num_live_caches", "chunk_cache_stats"):
            assert name not in vars(base) and callable(getattr(impl, name)), (impl, name)
    saved = (launcher.ReferenceModelActor, ppo_actor.PolicyModelActor, ppo_critic.CriticModelActor)
    try:
        upstream.install_chunked_model_actors()
        assert launcher.ReferenceModelActor is gpu_chunked.DartsReferenceModelActor
        assert ppo_actor.PolicyModelActor is gpu_chunked.DartsPolicyModelActor
        assert ppo_critic.CriticModelActor is gpu_chunked.DartsCriticModelActor
    finally:
        launcher.ReferenceModelActor, ppo_actor.PolicyModelActor, ppo_critic.CriticModelActor = saved
