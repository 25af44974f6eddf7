"""`LocalPPOTrainer`: the DARTS trainer plus what a local comparison must see each step.

Why a subclass: the comparison needs, for both runs, numbers upstream's status dict does not carry (the longest
response of the step, which bounds the decode steps, and the tokens generated), a per-step record the driver can read
while the run is going, and proof that each weight sync reached the engine. It extends `DartsPPOTrainer` (itself
upstream's `PPOTrainer` one level deep) by three short overrides that each call `super()` first or last:

- `train_step`: adds `local/response_length_max` and `local/response_tokens` (kept samples, all runs) to the status;
- `broadcast_to_vllm` (probe on): the engine's log-probs of a fixed probe sequence before and after upstream's weight
  sync, and the policy actor's own log-probs of the same tokens: `local/sync_engine_change` (max |after - before|) must
  be > 0 once the policy moved, and `local/sync_engine_policy_diff` (max |engine - policy|) must be ~0;
- `save_logs_and_checkpoints`: adds `local/engine_unfinished_requests` (must be 0 between steps), lets DARTS merge its
  metrics and upstream log them, then appends the step's numeric status to the JSONL file named by
  `$OPENRLHF_DARTS_LOCAL_STEP_LOG`.

The local driver passes both switches through the Ray runtime environment (`train.STEP_LOG_ENV`, `train.SYNC_PROBE_ENV`).
"""

from __future__ import annotations

import json
import os
import sys

import ray
import ray.cloudpickle
import torch

from openrlhf_darts import upstream
from openrlhf_darts.trainer.ppo_trainer import DartsPPOTrainer

STEP_LOG_ENV = "OPENRLHF_DARTS_LOCAL_STEP_LOG"
SYNC_PROBE_ENV = "OPENRLHF_DARTS_LOCAL_SYNC_PROBE"
PROBE_RESPONSE = "Start with 5 apples. 5 + 3 = 8.\nAnswer: 8"


class LocalPPOTrainerImpl(DartsPPOTrainer.__ray_actor_class__):
    def train_step(self, rollout_samples, global_step: int):
        lengths = torch.cat([e.response_length for e in rollout_samples])  # (num_samples,)
        status, next_step = super().train_step(rollout_samples, global_step)
        status["local/response_length_max"] = float(lengths.max())
        status["local/response_tokens"] = float(lengths.sum())
        return status, next_step

    # ---- weight-sync probe ------------------------------------------------------------------------------------------
    def _probe_tokens(self) -> tuple[list[int], int]:
        """Token ids of the first training prompt plus a fixed answer, and how many of them are the answer."""
        if not hasattr(self, "_probe"):
            prompt = upstream.dataset_prompts(self.prompts_dataloader)[0]
            prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            answer_ids = self.tokenizer(PROBE_RESPONSE, add_special_tokens=False)["input_ids"]
            self._probe = (prompt_ids + answer_ids + [self.tokenizer.eos_token_id], len(answer_ids) + 1)
        return self._probe

    def _engine_logprobs(self, token_ids: list[int], num_actions: int) -> torch.Tensor:
        """The engine's log-prob of each of the last `num_actions` tokens given its prefix, (num_actions,)."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        output = ray.get(self.vllm_engines[0].generate.remote(token_ids, params))
        positions = range(len(token_ids) - num_actions, len(token_ids))
        return torch.tensor([output.prompt_logprobs[t][token_ids[t]].logprob for t in positions])

    def _policy_logprobs(self, token_ids: list[int], num_actions: int) -> torch.Tensor:
        sequences = torch.tensor([token_ids])  # (1, T)
        action_mask = torch.ones((1, num_actions), dtype=torch.bool)  # (1, A)
        attention_mask = torch.ones_like(sequences)  # (1, T)
        refs = self.actor_model_group.async_run_method(
            "forward", sequences=sequences, action_mask=action_mask, attention_mask=attention_mask
        )
        return ray.get(refs)[0][0].float()  # (A,)

    def broadcast_to_vllm(self) -> None:
        if os.environ.get(SYNC_PROBE_ENV) != "1":
            return super().broadcast_to_vllm()
        token_ids, num_actions = self._probe_tokens()
        before = self._engine_logprobs(token_ids, num_actions)
        super().broadcast_to_vllm()
        after = self._engine_logprobs(token_ids, num_actions)
        policy = self._policy_logprobs(token_ids, num_actions)
        self._sync_metrics = {
            "local/sync_engine_change": float((after - before).abs().max()),
            "local/sync_engine_policy_diff": float((after - policy).abs().max()),
        }

    # ---- per-step record --------------------------------------------------------------------------------------------
    def save_logs_and_checkpoints(self, global_step: int, logs_dict=None, client_states=None) -> None:
        logs_dict = {} if logs_dict is None else logs_dict
        logs_dict.update(getattr(self, "_sync_metrics", {}))
        self._sync_metrics = {}
        unfinished = ray.get([engine.get_num_unfinished_requests.remote() for engine in self.vllm_engines])
        logs_dict["local/engine_unfinished_requests"] = float(sum(unfinished))
        super().save_logs_and_checkpoints(global_step, logs_dict, client_states)  # DARTS merges darts/* in place
        path = os.environ.get(STEP_LOG_ENV)
        if path:
            row = {"step": global_step, **{k: v for k, v in logs_dict.items() if isinstance(v, (int, float))}}
            with open(path, "a") as log:
                log.write(json.dumps(row) + "\n")


# Ship this class to the trainer's worker by value, like Ray ships `DartsPPOTrainer` itself. Shipped by reference, the
# worker ended up with two copies of `DartsPPOTrainer` and its zero-argument `super()` raised "obj must be an instance
# or subtype of type" (Ray 2.55); by value, the whole chain is one copy.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
LocalPPOTrainer = ray.remote(LocalPPOTrainerImpl)
