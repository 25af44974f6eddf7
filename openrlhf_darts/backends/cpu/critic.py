"""`CpuCriticActor`: upstream's `CriticModelActor` protocol on CPU (values for GAE, value-loss training).

`fit` is upstream's critic `ppo_train` without CUDA: upstream's own `CriticPPOTrainer.training_step` per micro-batch
(`CpuStrategy` does DeepSpeed's backward and AdamW step) and `ppo_train`'s status reduction (ppo_status.py).
"""

from __future__ import annotations

import ray
import torch

from openrlhf_darts import upstream
from openrlhf_darts.backends.cpu import ppo_status
from openrlhf_darts.backends.cpu.base import CpuModelActorBase, CpuReplayBuffer, load_critic
from openrlhf_darts.scoring.chunk_cache import ChunkCache, ChunkScoringMixin, critic_step, max_live_caches

_UP = upstream.model_side()


class CpuCriticActorImpl(ChunkScoringMixin, CpuModelActorBase):
    chunk_module_attr = "critic"  # chunk forwards in eval mode, as forward

    def init_model_from_pretrained(self, strategy, pretrain, max_steps):
        self._setup_distributed(strategy)
        args = self.args
        self.critic = load_critic(pretrain, args)
        self._check_aux_loss(self.critic)
        self._build_optimizer(self.critic, args.critic, max_steps)
        # What upstream's training_step reads from self (upstream.TRAINING_STEP_ATTRIBUTES), under upstream's names.
        self.critic_optim, self.critic_scheduler = self.optimizer, self.scheduler
        self.aux_loss = args.actor.aux_loss_coef > 1e-8  # upstream's critic reads the actor's coefficient
        self.critic_loss_fn = _UP.ValueLoss(args.critic.value_clip)
        self.replay_buffer = CpuReplayBuffer(args.train.micro_batch_size)
        self.chunks = ChunkCache(critic_step(self.critic), "values", max_live_caches(args))
        self._load_states("_critic", self.critic)

    @torch.no_grad()
    def forward(
        self,
        sequences: torch.LongTensor,  # (B, T)
        action_mask: torch.Tensor | None = None,  # (B, A)
        attention_mask: torch.Tensor | None = None,  # (B, T)
        packed_seq_lens=None,
    ) -> torch.Tensor:
        """Values of the action positions, (B, A), through upstream's critic forward."""
        self.critic.eval()
        values = self.critic(sequences, action_mask, attention_mask)
        self.critic.train()
        return values

    def append(self, experience) -> None:
        self.replay_buffer.append(experience)

    def fit(self):
        """One PPO critic update over the replay buffer; returns upstream's critic `ppo_train` status."""
        status_list = []
        for epoch in range(self.args.train.max_epochs):
            batches = self._micro_batches(self.replay_buffer, epoch)
            for step, (experience, loss_batch_info) in enumerate(batches):
                self.strategy.flush_next_step = step == len(batches) - 1
                status = _UP.critic_training_step(self, experience, step, loss_batch_info)
                status_list.append(self.strategy.all_reduce(status))
        self._fit_calls += 1
        self.replay_buffer.clear()
        return ppo_status.critic_status(status_list)

    def save_checkpoint(self, tag, metric_value=None, metric_key=None):
        self._save_states("_critic", tag, self.critic, {"metric_value": metric_value, "metric_key": metric_key})

    def save_model(self):
        if not self.args.critic.save_value_network or self._rank != 0:
            return
        self.critic.save_pretrained(self.args.ckpt.output_dir + "_critic")


CpuCriticActor = ray.remote(num_gpus=0)(CpuCriticActorImpl)
