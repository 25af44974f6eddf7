"""Step 7 of the pipeline: upstream's PPO trainer with the DARTS collaborators swapped in (OPENRLHF_SEAMS.md §10).

`DartsPPOTrainer` extends OpenRLHF's `PPOTrainer` one level deep from the unwrapped Ray class and is re-wrapped with
`ray.remote`, exactly as upstream declares its own. Upstream's constructor builds the tokenizer, the datasets, the
samples generator and the experience maker; ours then replaces two of them as attributes:

- `self.samples_generator` -> `DartsSamplesGenerator` (plans, redundant candidates, selection at the engine);
- `self.experience_maker` -> `DartsExperienceMaker` when `--darts.stream`, attached to the generator as its
  `group_sink`, so the forwards of finished groups overlap generation.

`fit`, `train_step`, PPO training and weight sync stay upstream's. Two methods are overridden:

- `save_logs_and_checkpoints(global_step, logs_dict, client_states)`, which `fit` calls once per step with the step's
  status dict: it merges the step's `darts/*` and `timing/darts_*` metrics into that dict before upstream logs it to
  wandb / TensorBoard, and puts the planner state (per-prompt length spread, recent lengths) into `client_states`,
  which upstream stores in the actor checkpoint. Merging here rather than in `train_step` keeps upstream's
  `timing/step_total` (the sum of the `timing/*` keys `fit` computes after `train_step`) the sum of upstream's own
  phases: DARTS phases happen inside them and must not be counted twice.
- `restore_best_checkpoint_state(checkpoint_states)`, which `fit` calls with the loaded states before the first step:
  it restores the planner state.

Both also hand the generator upstream's `global_step` (`completed_steps`), which decides the `--darts.warmup_steps`
warm-up; a resumed run therefore continues its warm-up where the checkpoint left it.
With `--tail_batching.enable` (DARTS off; the comparison arm) the same two overrides serve tail batching instead: the
samples generator is `TailBatchingSamplesGenerator`, its `tail_batching/*` metrics are merged, and its deferred-prompt
queue rides in `client_states` (the prompts it holds were already drawn from the dataloader whose state upstream saves).
"""

from __future__ import annotations

import logging

import ray

from openrlhf_darts import upstream
from openrlhf_darts.config import DartsConfig
from openrlhf_darts.tail_batching import TailBatchingConfig
from openrlhf_darts.trainer.samples_generator import DartsSamplesGenerator

logger = logging.getLogger(__name__)

PLANNER_STATE_KEY = "darts_planner"  # key of the planner state inside upstream's checkpoint client_states
TAIL_QUEUE_KEY = "tail_batching_queue"  # key of the tail-batching deferred-prompt queue inside client_states


@ray.remote
class DartsPPOTrainer(upstream.ppo_trainer_base()):
    """Upstream's single-controller PPO trainer with DARTS sample generation (and streaming experience making)."""

    samples_generator_class = DartsSamplesGenerator  # swapped in when DARTS is on; a subclass may name its own

    def __init__(
        self,
        pretrain: str,
        strategy,
        actor_model_group,
        critic_model_group,
        reward_model_group,
        reference_model_group,
        vllm_engines,
        **generate_kwargs,
    ) -> None:
        super().__init__(
            pretrain,
            strategy,
            actor_model_group,
            critic_model_group,
            reward_model_group,
            reference_model_group,
            vllm_engines,
            **generate_kwargs,
        )
        self.darts_config = DartsConfig.from_args(strategy.args)
        self.tail_batching_config = TailBatchingConfig.from_args(strategy.args)  # refuses it together with DARTS
        if self.tail_batching_config.enable:
            from openrlhf_darts.trainer.tail_batching import TailBatchingSamplesGenerator

            self.samples_generator = TailBatchingSamplesGenerator(
                strategy,
                self.prompts_dataloader,
                self.eval_dataloader,
                self.samples_generator.tokenizer,
                vllm_engines,
                self.tail_batching_config,
            )
            return
        if not self.darts_config.enable:
            return
        # Reuse the tokenizer upstream loaded for its own generator, so both sides tokenize identically.
        self.samples_generator = self.samples_generator_class(
            strategy,
            self.prompts_dataloader,
            self.eval_dataloader,
            self.samples_generator.tokenizer,
            vllm_engines,
            self.darts_config,
        )
        if self.darts_config.stream:
            from openrlhf_darts.trainer.experience_maker import DartsExperienceMaker

            self.experience_maker = DartsExperienceMaker(
                self.actor_model_group,
                self.critic_model_group,
                self.reward_model_group,
                self.reference_model_group,
                self.kl_ctl,
                self.strategy,
                self.tokenizer,
                config=self.darts_config,
            )
            # The generator hands each accepted group to the maker the moment it resolves, so its forwards run while
            # the other groups still generate.
            self.samples_generator.group_sink = self.experience_maker

    def save_logs_and_checkpoints(self, global_step: int, logs_dict=None, client_states=None) -> None:
        logs_dict = {} if logs_dict is None else logs_dict
        client_states = {} if client_states is None else client_states
        if self.darts_config.enable:
            self.samples_generator.completed_steps = global_step  # fit calls this after each training step
            # Popped every step (logged or not), so a logged value always belongs to this step.
            logs_dict.update(self.samples_generator.pop_metrics())
            if self.darts_config.stream:
                logs_dict.update(self.experience_maker.pop_metrics())
            # In place: fit hands the same dict to save_best_checkpoint after evaluation.
            client_states[PLANNER_STATE_KEY] = self.samples_generator.planner.state_dict()
        if self.tail_batching_config.enable:
            logs_dict.update(self.samples_generator.pop_metrics())
            client_states[TAIL_QUEUE_KEY] = self.samples_generator.queue.state_dict()
        super().save_logs_and_checkpoints(global_step, logs_dict, client_states)

    def restore_best_checkpoint_state(self, checkpoint_states) -> None:
        super().restore_best_checkpoint_state(checkpoint_states)
        if checkpoint_states:
            _restore_tail_queue(self, checkpoint_states)
        if not self.darts_config.enable or not checkpoint_states:
            return
        self.samples_generator.completed_steps = checkpoint_states["global_step"]  # 0 for a fresh run
        # A checkpoint written without DARTS (a baseline run, say): allocation restarts from no history.
        _load_state(
            checkpoint_states, PLANNER_STATE_KEY, self.samples_generator.planner.load_state_dict,
            "DARTS length statistics start empty",
        )  # fmt: skip


def _restore_tail_queue(trainer, checkpoint_states) -> None:
    """Load the deferred-prompt queue into the tail-batching generator, or warn where it cannot be used."""
    queue = checkpoint_states.get(TAIL_QUEUE_KEY)
    if trainer.tail_batching_config.enable:
        _load_state(
            checkpoint_states, TAIL_QUEUE_KEY, trainer.samples_generator.queue.load_state_dict,
            "tail batching starts with an empty deferred queue",
        )  # fmt: skip
    elif queue is not None and queue["items"]:
        # Those prompts were drawn from the dataloader already: this run will never see them.
        logger.warning(
            "checkpoint holds %d deferred tail-batching prompts but --tail_batching.enable is off; they are skipped",
            len(queue["items"]),
        )


def _load_state(checkpoint_states, key: str, load, starts_empty: str) -> None:
    """`load(checkpoint_states[key])`; a checkpoint past step 0 without that state (written with the feature off) is
    resumed from an empty state, and a warning says so with `starts_empty`."""
    state = checkpoint_states.get(key)
    if state is not None:
        load(state)
    elif checkpoint_states["global_step"] > 0:
        logger.warning(
            "checkpoint at global_step=%s has no %r state; %s", checkpoint_states["global_step"], key, starts_empty
        )
