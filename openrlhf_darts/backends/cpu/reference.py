"""`CpuReferenceActor`: upstream's `ReferenceModelActor` protocol on CPU (frozen fp32 policy copy, KL reference)."""

from __future__ import annotations

import ray
import torch

from openrlhf_darts.backends.cpu.base import CpuModelActorBase, load_causal_lm, reject_multimodal
from openrlhf_darts.scoring.chunk_cache import ChunkCache, ChunkScoringMixin, causal_lm_step, max_live_caches


class CpuReferenceActorImpl(ChunkScoringMixin, CpuModelActorBase):
    def init_model_from_pretrained(self, strategy, pretrain):
        self._setup_distributed(strategy)
        self.model = load_causal_lm(pretrain, self.args)
        self.model.eval()
        self.chunks = ChunkCache(
            causal_lm_step(self.model.model, self.model.temperature), "logprobs", max_live_caches(self.args)
        )

    @torch.no_grad()
    def forward(
        self,
        sequences: torch.LongTensor,  # (B, T)
        action_mask: torch.Tensor | None = None,  # (B, A)
        attention_mask: torch.Tensor | None = None,  # (B, T)
        return_output=False,
        packed_seq_lens: list[int] | None = None,
        mm_train_inputs_list=None,
    ) -> torch.Tensor:
        """Reference log-probs of the actions, (B, A), through upstream's `Actor.forward`."""
        reject_multimodal(mm_train_inputs_list)
        return self.model(sequences, action_mask, attention_mask)


CpuReferenceActor = ray.remote(num_gpus=0)(CpuReferenceActorImpl)
