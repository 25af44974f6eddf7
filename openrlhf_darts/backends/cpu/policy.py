"""`CpuPolicyActor`: upstream's `PolicyModelActor` protocol on CPU: old log-probs, the PPO/GRPO update, weight sync.

`fit` is upstream's `ppo_train` without CUDA: micro-batches from the replay buffer with upstream's loss normalization
(`iter_grad_accum_global_norm`), upstream's own `ActorPPOTrainer.training_step` on each (policy loss, KL loss and
`logprobs_diff`, entropy term, MoE balancing loss, status keys; `CpuStrategy` does DeepSpeed's backward and AdamW
step), and `ppo_train`'s status reduction (ppo_status.py). The attributes that `training_step` reads from `self`
(`upstream.TRAINING_STEP_ATTRIBUTES`) are set in `init_model_from_pretrained`. `broadcast_to_vllm` pushes every
parameter into every engine as bytes through `DartsRolloutActor.update_weights_from_lists` (NCCL and CUDA IPC do not
exist on CPU), then resets prefix caches.
"""

from __future__ import annotations

import logging

import ray
import torch

from openrlhf_darts import upstream
from openrlhf_darts.backends.cpu import ppo_status
from openrlhf_darts.backends.cpu.base import CpuModelActorBase, CpuReplayBuffer, load_causal_lm, reject_multimodal
from openrlhf_darts.backends.cpu.worker_extension import weight_payload
from openrlhf_darts.scoring.chunk_cache import ChunkCache, ChunkScoringMixin, causal_lm_step, max_live_caches

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
        self._check_aux_loss(self.actor.model)
        self._build_optimizer(self.actor, args.actor, max_steps)
        # What upstream's training_step reads from self (upstream.TRAINING_STEP_ATTRIBUTES), under upstream's names.
        self.actor_optim, self.actor_scheduler = self.optimizer, self.scheduler
        self.aux_loss = args.actor.aux_loss_coef > 1e-8
        self.ema_model, self.ema_beta = None, None
        self.actor_loss_fn = _UP.PolicyLoss(
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
            causal_lm_step(self.actor.model, self.actor.temperature), "logprobs", max_live_caches(args)
        )
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
        """One PPO/GRPO policy update over the replay buffer; returns upstream's `ppo_train` status."""
        status_list = []
        for epoch in range(self.args.train.max_epochs):
            batches = self._micro_batches(self.replay_buffer, epoch)
            for step, (experience, loss_batch_info) in enumerate(batches):
                self.strategy.flush_next_step = step == len(batches) - 1
                status = _UP.policy_training_step(self, experience, kl_ctl, step, loss_batch_info)
                status_list.append(ppo_status.policy_micro_step(status, self.strategy))
        self._fit_calls += 1
        self.replay_buffer.clear()
        return ppo_status.policy_status(status_list)

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
