"""A local training run (openrlhf_darts.local.train.run) that records its state right before step k+1 generates.

Usage: python resume_probe.py RUN_DIR CAPTURE_FILE K [upstream and --darts.* flags ...]

Test-only subclasses go in through the seam the local mode itself uses (`run(classes=...)` ->
`upstream.train_classes`), so everything else is the product's code path:

- `ProbePolicy` (the CPU policy actor) answers `probe_training_state`: its live model tensors, optimizer and scheduler
  state, `fit` count and torch RNG state, read from the actor's own attributes;
- `ProbeGenerator` (the DARTS samples generator) calls the trainer before each training dispatch, i.e. after the
  prompts of a step were drawn and before they are planned and generated;
- `ProbeTrainer` (the local trainer) knows the last completed step (from `save_logs_and_checkpoints`, or from the
  loaded checkpoint in `restore_best_checkpoint_state`); at the first dispatch after step K it writes the planner
  state, the drawn prompts, the prompt dataloader's state, the policy state and the engine's log-probs of a fixed
  sequence to CAPTURE_FILE, and after step K+1 it adds the plans the engine ran (from the group outcomes) and the
  candidate lengths of that step.

Every dispatch's prompts are recorded too (`prompts_by_step`), so the test can check that a lost dataloader position
would be visible.
"""

import dataclasses
import os
import sys

import ray
import torch

from openrlhf_darts.backends.cpu.policy import CpuPolicyActorImpl
from openrlhf_darts.local import train
from openrlhf_darts.local.trainer import LocalPPOTrainerImpl
from openrlhf_darts.trainer.samples_generator import DartsSamplesGenerator

CAPTURE_FILE_ENV, CAPTURE_STEP_ENV = "RESUME_PROBE_FILE", "RESUME_PROBE_STEP"


class ProbePolicy(CpuPolicyActorImpl):
    def probe_training_state(self) -> dict:
        return {
            "model": {name: t.detach().clone() for name, t in self.actor.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "fit_calls": self._fit_calls,
            "torch_rng": torch.get_rng_state(),
        }


class ProbeGenerator(DartsSamplesGenerator):
    before_dispatch = None  # set by ProbeTrainer

    def _dispatch_prompts_to_vllm(self, prompts, labels, *, images=None, **generate_kwargs):
        if self._training_rollout and self.before_dispatch is not None:
            self.before_dispatch(list(prompts))
        return super()._dispatch_prompts_to_vllm(prompts, labels, images=images, **generate_kwargs)


class ProbeTrainer(LocalPPOTrainerImpl):
    samples_generator_class = ProbeGenerator

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.samples_generator.before_dispatch = self._before_dispatch
        self._path = os.environ[CAPTURE_FILE_ENV]
        self._k = int(os.environ[CAPTURE_STEP_ENV])
        self._completed = 0
        self._captured = False
        self._prompts_by_step = {}

    def restore_best_checkpoint_state(self, checkpoint_states) -> None:
        super().restore_best_checkpoint_state(checkpoint_states)
        if checkpoint_states:
            self._completed = checkpoint_states["global_step"]

    def _before_dispatch(self, prompts: list[str]) -> None:
        self._prompts_by_step[self._completed + 1] = prompts
        if self._completed != self._k or self._captured:
            return
        self._captured = True
        policy = ray.get(self.actor_model_group.async_run_method("probe_training_state"))[0]
        state = {
            "planner": self.samples_generator.planner.state_dict(),
            "prompts": prompts,
            "dataloader": self.prompts_dataloader.state_dict(),
            "policy": policy,
            "engine_logprobs": self._engine_logprobs(*self._probe_tokens()),
        }
        torch.save(state, self._path)

    def save_logs_and_checkpoints(self, global_step: int, logs_dict=None, client_states=None) -> None:
        super().save_logs_and_checkpoints(global_step, logs_dict, client_states)
        self._completed = global_step
        if global_step == self._k + 1 and self._captured:
            state = torch.load(self._path, weights_only=False)
            outcomes = self.samples_generator.last_outcomes  # this step's groups, in dispatch order
            state["plans"] = [dataclasses.asdict(outcome.plan) for outcome in outcomes]
            state["lengths_after"] = [list(outcome.lengths) for outcome in outcomes]
            state["prompts_by_step"] = self._prompts_by_step
            torch.save(state, self._path)


def main() -> None:
    run_dir, capture_file, k, *flags = sys.argv[1:]
    train.run(
        flags,
        run_dir,
        env_vars={CAPTURE_FILE_ENV: capture_file, CAPTURE_STEP_ENV: k},
        classes={"trainer": ray.remote(ProbeTrainer), "policy": ray.remote(num_gpus=0)(ProbePolicy)},
    )


if __name__ == "__main__":
    main()
