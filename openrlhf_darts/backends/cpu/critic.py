"""`CpuCriticActor`: upstream's `CriticModelActor` protocol on CPU (values for GAE, value-loss training)."""

from __future__ import annotations

import ray
import torch

from openrlhf_darts import upstream
from openrlhf_darts.backends.cpu.base import CpuModelActorBase, CpuReplayBuffer, load_critic
from openrlhf_darts.backends.cpu.chunk_cache import ChunkCache, ChunkScoringMixin, critic_step
from openrlhf_darts.backends.cpu.reference import max_live_caches

_UP = upstream.model_side()


class CpuCriticActorImpl(ChunkScoringMixin, CpuModelActorBase):
    chunk_module_attr = "critic"  # chunk forwards in eval mode, as forward

    def init_model_from_pretrained(self, strategy, pretrain, max_steps):
        self._setup_distributed(strategy)
        args = self.args
        self.critic = load_critic(pretrain, args)
        self._build_optimizer(self.critic, args.critic, max_steps)
        self.loss_fn = _UP.ValueLoss(args.critic.value_clip)
        self.replay_buffer = CpuReplayBuffer(args.train.micro_batch_size)
        self.chunks = ChunkCache(critic_step(self.critic), "values", max_live_caches())
        self._fit_calls = 0
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
        """One PPO critic update over the replay buffer with upstream's `ValueLoss`; returns upstream's status keys."""
        self.critic.train()
        sums: dict[str, float] = {}
        weights: dict[str, float] = {}
        for epoch in range(self.args.train.max_epochs):
            batches = list(self._micro_batches(self.replay_buffer, seed_offset=1000 * self._fit_calls + epoch))
            for step, (experience, info) in enumerate(batches):
                values = self.critic(experience.sequences, experience.action_mask, experience.attention_mask)
                loss = self.loss_fn(
                    values, experience.values, experience.returns, action_mask=experience.action_mask, **info
                )
                self._backward(loss, self.critic, step, last=step == len(batches) - 1)
                n_tokens = float(experience.action_mask.sum())
                for key, value in (
                    ("critic_loss", float(loss)),
                    ("values", float(_UP.masked_mean(values.detach(), experience.action_mask))),
                ):
                    sums[key] = sums.get(key, 0.0) + value * n_tokens
                    weights[key] = weights.get(key, 0.0) + n_tokens
        self._fit_calls += 1
        self.replay_buffer.clear()
        status = self._all_reduce_status(sums, weights)
        status["critic_lr"] = self.scheduler.get_last_lr()[0]
        status["critic_grad_norm"] = self.grad_norm
        return status

    def save_checkpoint(self, tag, metric_value=None, metric_key=None):
        self._save_states("_critic", tag, self.critic, {"metric_value": metric_value, "metric_key": metric_key})

    def save_model(self):
        if not self.args.critic.save_value_network or self._rank != 0:
            return
        self.critic.save_pretrained(self.args.ckpt.output_dir + "_critic")


CpuCriticActor = ray.remote(num_gpus=0)(CpuCriticActorImpl)
