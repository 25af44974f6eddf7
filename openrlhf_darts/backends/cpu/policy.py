"""`CpuPolicyActor`: upstream's `PolicyModelActor` protocol on CPU: old log-probs, the PPO/GRPO update, weight sync.

`fit` runs upstream's `PolicyLoss` (and KL loss / entropy terms when enabled) over the replay buffer with upstream's
loss normalization (`iter_grad_accum_global_norm`), AdamW and upstream's scheduler, and returns the status keys
upstream's `PPOTrainer` logs (`policy_loss`, `actor_lr`, `actor_grad_norm`, `ppo_clip_ratio`, `ppo_kl`, the
experience `info` means ...). `broadcast_to_vllm` pushes every parameter into every engine as bytes through
`DartsRolloutActor.update_weights_from_lists` (NCCL and CUDA IPC do not exist on CPU), then resets prefix caches.
"""

from __future__ import annotations

import logging

import ray
import torch

from openrlhf_darts import upstream
from openrlhf_darts.backends.cpu.base import CpuModelActorBase, CpuReplayBuffer, load_causal_lm, reject_multimodal
from openrlhf_darts.backends.cpu.chunk_cache import ChunkCache, ChunkScoringMixin, causal_lm_step
from openrlhf_darts.backends.cpu.reference import max_live_caches
from openrlhf_darts.backends.cpu.worker_extension import weight_payload

logger = logging.getLogger(__name__)
_UP = upstream.model_side()
SYNC_CHUNK_BYTES = 64 * 2**20  # per engine call; bounds the pickled payload held at once


class CpuPolicyActorImpl(ChunkScoringMixin, CpuModelActorBase):
    chunk_module_attr = "actor"  # chunk forwards in eval mode, as forward

    def init_model_from_pretrained(self, strategy, pretrain, max_steps=None, vllm_engines=None):
        self._setup_distributed(strategy)
        args = self.args
        if args.train.enable_ema:
            raise ValueError("--train.enable_ema is not implemented by the CPU backend; drop it for CPU runs")
        if args.ds.lora.rank > 0:
            raise ValueError(f"--ds.lora.rank={args.ds.lora.rank}: LoRA is not implemented by the CPU backend; use 0")
        self.pretrain = pretrain
        self.vllm_engines = vllm_engines
        self.actor = load_causal_lm(pretrain, args)
        if args.actor.gradient_checkpointing_enable:
            self.actor.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": args.actor.gradient_checkpointing_reentrant}
            )
        self._build_optimizer(self.actor, args.actor, max_steps)
        self.loss_fn = _UP.PolicyLoss(
            clip_eps_low=args.actor.eps_clip_low_high[0],
            clip_eps_high=args.actor.eps_clip_low_high[1],
            dual_clip=args.actor.dual_clip,
            token_level_loss=args.actor.loss_agg_mode == "token-mean",
            policy_loss_type=args.actor.policy_loss_type,
            is_correction_level=args.algo.advantage.is_correction_level,
            is_correction_mode=args.algo.advantage.is_correction_mode,
            is_correction_gating=args.algo.advantage.is_correction_gating,
            is_correction_threshold=args.algo.advantage.is_correction_threshold,
        )
        self.replay_buffer = CpuReplayBuffer(args.train.micro_batch_size)
        self.chunks = ChunkCache(
            causal_lm_step(self.actor.model, self.actor.temperature), "logprobs", max_live_caches()
        )
        self._fit_calls = 0
        self.checkpoint_states = self._load_states("_actor", self.actor)

    # ---- experience side ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(
        self,
        sequences: torch.LongTensor,  # (B, T)
        action_mask: torch.Tensor | None = None,  # (B, A)
        attention_mask: torch.Tensor | None = None,  # (B, T)
        packed_seq_lens=None,
        mm_train_inputs_list=None,
    ) -> torch.Tensor:
        """Old-policy log-probs of the actions, (B, A), through upstream's `Actor.forward` in eval mode."""
        reject_multimodal(mm_train_inputs_list)
        self.actor.eval()
        log_probs = self.actor(sequences, action_mask, attention_mask)
        self.actor.train()
        return log_probs

    def append(self, experience) -> None:
        self.replay_buffer.append(experience)

    # ---- training -----------------------------------------------------------------------------------------------
    def fit(self, kl_ctl: float = 0):
        """One PPO/GRPO policy update over the replay buffer; returns upstream's status keys (weighted means)."""
        args = self.args
        self.actor.train()
        sums: dict[str, float] = {}
        weights: dict[str, float] = {}

        def record(key: str, value: torch.Tensor | float, weight: float) -> None:
            value = value.float().mean().item() if isinstance(value, torch.Tensor) else float(value)
            sums[key] = sums.get(key, 0.0) + value * weight
            weights[key] = weights.get(key, 0.0) + weight

        for epoch in range(args.train.max_epochs):
            batches = list(self._micro_batches(self.replay_buffer, seed_offset=1000 * self._fit_calls + epoch))
            for step, (experience, info) in enumerate(batches):
                loss, metrics = self._policy_loss(experience, kl_ctl, info)
                self._backward(loss, self.actor, step, last=step == len(batches) - 1)
                n_tokens = float(experience.action_mask.sum())
                n_samples = float(experience.action_mask.shape[0])
                for key, value in metrics.items():
                    record(key, value, n_tokens)
                for key, value in experience.info.items():
                    if key in metrics:
                        continue
                    if isinstance(value, torch.Tensor):
                        record(key, value, n_tokens if value.dim() == 0 else n_samples)
                    elif isinstance(value, list):  # collated per-sample 0-d tensors, as upstream's training_step
                        record(key, torch.tensor([float(v) for v in value]), n_samples)
                for key in ("response_length", "total_length"):
                    value = getattr(experience, key)
                    if isinstance(value, torch.Tensor):
                        record(key, value, n_samples)
        self._fit_calls += 1
        self.replay_buffer.clear()
        status = self._all_reduce_status(sums, weights)
        status["actor_lr"] = self.scheduler.get_last_lr()[0]
        status["actor_grad_norm"] = self.grad_norm
        return status

    def _policy_loss(self, experience, kl_ctl: float, info: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Upstream's training_step loss: PolicyLoss, optional KL loss and entropy term (CPU, no DeepSpeed)."""
        args = self.args
        action_log_probs, output = self.actor(
            experience.sequences,
            experience.action_mask,
            attention_mask=experience.attention_mask,
            return_output=True,
            return_entropy=args.actor.entropy_coef is not None,
        )
        actor_loss, clip_ratio, ppo_kl, vllm_kl, is_filter_ratio = self.loss_fn(
            action_log_probs,
            experience.action_log_probs,
            experience.advantages,
            action_mask=experience.action_mask,
            rollout_log_probs=experience.rollout_log_probs,
            **info,
        )
        metrics = {
            "policy_loss": actor_loss.detach(),
            "ppo_clip_ratio": clip_ratio.detach(),
            "ppo_kl": ppo_kl.detach(),
        }
        if vllm_kl is not None:
            metrics["vllm_kl"] = vllm_kl.detach()
            metrics["is_filter_ratio"] = is_filter_ratio.detach()
        loss = actor_loss
        if args.algo.kl.use_loss:
            if args.algo.kl.init_coef > 0:
                kl = _UP.compute_approx_kl(
                    action_log_probs,
                    experience.base_action_log_probs,
                    log_probs_old=experience.action_log_probs,
                    kl_estimator=args.algo.kl.estimator,
                    unbiased_gradient=args.algo.kl.unbiased_gradient,
                )
            else:
                kl = torch.zeros_like(action_log_probs)
            kl_loss = _UP.aggregate_loss(kl, experience.action_mask, **info)
            metrics["kl"] = kl_loss.detach()
            loss = loss + kl_loss * kl_ctl
        if args.actor.entropy_coef is not None:
            entropy_loss = _UP.aggregate_loss(
                output.entropy[:, -experience.action_mask.shape[1] :], experience.action_mask, **info
            )
            metrics["entropy_loss"] = entropy_loss.detach()
            loss = loss - entropy_loss * args.actor.entropy_coef
        return loss, metrics

    # ---- weight sync --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def broadcast_to_vllm(self) -> int:
        """Load this policy's weights into every engine (rank 0 only); returns the number of tensors sent."""
        if self._rank != 0 or not self.vllm_engines:
            return 0
        batches, batch, size = [], [], 0
        for name, param in self.actor.model.named_parameters():
            payload = weight_payload(name, param)
            batch.append(payload)
            size += len(payload[3])
            if size >= SYNC_CHUNK_BYTES:
                batches.append(batch)
                batch, size = [], 0
        if batch:
            batches.append(batch)
        sent = 0
        for i, batch in enumerate(batches):
            final = i == len(batches) - 1
            ray.get([engine.update_weights_from_lists.remote(batch, final) for engine in self.vllm_engines])
            sent += len(batch)
        # Cached prefixes were computed with the old weights.
        ray.get([engine.reset_prefix_cache.remote() for engine in self.vllm_engines])
        return sent

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def get_checkpoint_states(self):
        return self.checkpoint_states

    def save_checkpoint(self, tag, client_states=None, metric_value=None, metric_key=None):
        self._save_states("_actor", tag, self.actor, client_states)
        if self.args.ckpt.save_hf and self._rank == 0:
            self._save_hf(f"{self.args.ckpt.path}/{tag}_hf")

    def save_model(self):
        if self._rank == 0:
            self._save_hf(self.args.ckpt.output_dir)

    def _save_hf(self, path: str) -> None:
        from transformers import AutoTokenizer

        self.actor.model.save_pretrained(path)
        AutoTokenizer.from_pretrained(self.pretrain, trust_remote_code=True).save_pretrained(path)


CpuPolicyActor = ray.remote(num_gpus=0)(CpuPolicyActorImpl)
