"""CPU model actors: OpenRLHF's policy / reference / critic actor protocol, implemented with Hugging Face models on CPU.

Upstream's DeepSpeed actors call `torch.cuda` directly, so they cannot run on a CPU machine. These classes expose the
same remote methods with the same signatures (`init_model_from_pretrained`, `forward`, `append`, `fit`,
`broadcast_to_vllm`, `save_checkpoint`, `get_checkpoint_states`, `save_model`, `empty_cache`, `execute_batch`, ...), so
upstream's `RayActorGroup`, `RemoteExperienceMaker` and `PPOTrainer` drive them unchanged. Models load in float32 with
`sdpa` attention (flash-attention settings are mapped to sdpa), packing off; losses, KL, replay-buffer collation and
loss normalization are OpenRLHF's own functions; the optimizer is torch AdamW with upstream's scheduler.

How to build the groups (the API the local end-to-end mode uses; keep it stable):

    from openrlhf_darts.backends.cpu import groups
    policy = groups.cpu_actor_group("policy")            # an upstream RayActorGroup of CpuPolicyActor
    reference = groups.cpu_actor_group("reference")      # None-equivalent: skip it when --algo.kl.init_coef == 0
    critic = groups.cpu_actor_group("critic")             # GAE only
    ray.get(policy.async_init_model_from_pretrained(strategy, pretrain, max_steps, vllm_engines))
    ray.get(reference.async_init_model_from_pretrained(strategy, pretrain))
    ray.get(critic.async_init_model_from_pretrained(strategy, critic_pretrain, max_steps))

`strategy` is upstream's `DeepspeedStrategy` from `get_strategy(args)` (`upstream.model_side_strategy(args)`; only `.args`
and `.is_rank_0()` are used on CPU; DeepSpeed itself is never initialized). Outside upstream's CLI, `args.cpu_args(...)`
builds the namespace the actors read. Upstream's own `train()` also works: it builds `RayActorGroup`s of whatever
classes `openrlhf.trainer.ray.{launcher,ppo_actor,ppo_critic}` hold, with logical GPUs per actor (local/train.py).

`num_actors > 1` gives data-parallel actors in a CPU-only placement group, with gradients averaged over gloo. Actors ask Ray for no GPU and no CPU,
so the single logical GPU of a CPU cluster stays with the vLLM engine. The engines passed as `vllm_engines` must be
`DartsRolloutActor`s: the weight sync calls their `update_weights_from_lists`, which reaches
`worker_extension.CpuWorkerWrap` through `collective_rpc` with bytes payloads (tensors cannot be pickled there on CPU).

Token-level streaming adds `forward_chunk(sample_id, tokens)` -> per-token log-probs (values for the critic) of the
chunk, `finish_chunks(sample_id, action_mask)`, `release_chunks(sample_ids)` and `num_live_caches()` (`openrlhf_darts.scoring.chunk_cache`).

This package imports nothing heavy; each actor module imports torch, transformers and OpenRLHF.
"""
