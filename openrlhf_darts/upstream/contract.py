"""What this package relies on inside OpenRLHF 0.11.2, declared once: the version guard and the contract data.

- `SUPPORTED_OPENRLHF` / `check_version`: the tested OpenRLHF versions; importing this module checks the installed one
  and installs the CPU flash_attn fallback (`compat.install`) before anything imports OpenRLHF.
- `CONTRACT`: every upstream symbol we call, with the parameters we call it with.
- `BEHAVIOUR_PINNED`: upstream methods whose behaviour we rely on or mirror (source hashes in the contract test).
- `TRAINING_STEP_STRATEGY` / `TRAINING_STEP_ATTRIBUTES`: what upstream's `training_step` reads (the CPU actors).
- `ATTRIBUTES`: upstream attributes we read or rebind, with the method that assigns them.
- `LOCAL_SEAMS`: the module globals the local mode rebinds (`wiring.train_classes`).

`tests/contract/test_upstream.py` checks every entry, so an upgrade fails loudly in one place. Data and `resolve` only:
the doors themselves live in `classes`, `wiring`, `model_actors` and `rollout_side`.
"""

from __future__ import annotations

import importlib
import importlib.metadata

from openrlhf_darts import compat

SUPPORTED_OPENRLHF = ("0.11.2",)


def check_version() -> str:
    """Return the installed OpenRLHF version, or raise if it is outside the tested range."""
    found = importlib.metadata.version("openrlhf")
    if found not in SUPPORTED_OPENRLHF:
        raise RuntimeError(
            f"openrlhf=={found} is installed but openrlhf_darts is tested against {SUPPORTED_OPENRLHF}; install "
            f"openrlhf=={SUPPORTED_OPENRLHF[-1]} (pip install --no-deps openrlhf=={SUPPORTED_OPENRLHF[-1]}) or run "
            "tests/contract/test_upstream.py against the new version and extend SUPPORTED_OPENRLHF"
        )
    return found


check_version()
compat.install()

# Symbols, with the parameters we call them with, that must exist in the installed OpenRLHF.
CONTRACT: dict[str, tuple[str, ...]] = {
    # The engine actor, the samples generator and the experience maker (rollout/, trainer/).
    "openrlhf.trainer.ray.vllm_engine.RolloutRayActor.generate": ("prompt_token_ids", "sampling_params"),
    "openrlhf.trainer.ray.vllm_engine.RolloutRayActor.generate_responses": (
        "prompt",
        "label",
        "sampling_params",
        "max_length",
        "hf_tokenizer",
        "num_samples",
        "images",
    ),
    "openrlhf.trainer.ray.vllm_engine.RolloutRayActor.get_num_unfinished_requests": (),
    "openrlhf.trainer.ray.vllm_engine.create_vllm_engines": (
        "num_engines",
        "tensor_parallel_size",
        "pretrain",
        "seed",
        "full_determinism",
        "enable_prefix_caching",
        "enforce_eager",
        "max_model_len",
        "shared_pg",
        "gpu_memory_utilization",
        "vllm_enable_sleep",
        "logprobs_mode",
        "agent_func_path",
        "remote_rm_url",
    ),
    "openrlhf.utils.agent.SingleTurnAgentExecutor.execute": (
        "prompt",
        "label",
        "sampling_params",
        "max_length",
        "hf_tokenizer",
        "llm_engine",
        "images",
    ),
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator.__init__": (
        "strategy",
        "prompts_dataloader",
        "eval_dataloader",
        "tokenizer",
        "vllm_engines",
    ),
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator.generate_samples": (),
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator._generate_vllm": (
        "dataloader_iter",
        "num_prompts",
        "dynamic_filtering",
    ),
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator._dispatch_prompts_to_vllm": (
        "prompts",
        "labels",
        "images",
    ),
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator._process_response_into_experience": ("response",),
    "openrlhf.trainer.ppo_utils.experience_maker.RemoteExperienceMaker.make_experience_batch": ("rollout_samples",),
    "openrlhf.trainer.ppo_utils.experience_maker.RemoteExperienceMaker.make_experience": ("samples_list",),
    "openrlhf.trainer.ppo_utils.experience_maker.RemoteExperienceMaker.compute_advantages_and_returns": (
        "experiences",
    ),
    "openrlhf.utils.config.hierarchize": ("args",),
    # Model side: the CPU backend and the streaming experience maker (model_actors.py).
    "openrlhf.trainer.ray.launcher.BaseModelActor.execute_batch": ("method_name", "all_data", "start_idx", "end_idx"),
    "openrlhf.trainer.ray.launcher.RayActorGroup.__init__": (
        "num_nodes",
        "num_gpus_per_node",
        "ray_actor_type",
        "pg",
        "num_gpus_per_actor",
        "duplicate_actors",
    ),
    "openrlhf.trainer.ray.launcher.RayActorGroup.async_run_method_batch": ("method_name",),
    "openrlhf.trainer.ray.launcher.ReferenceModelActor.init_model_from_pretrained": ("strategy", "pretrain"),
    "openrlhf.trainer.ray.launcher.ReferenceModelActor.forward": (
        "sequences",
        "action_mask",
        "attention_mask",
        "return_output",
        "packed_seq_lens",
        "mm_train_inputs_list",
    ),
    "openrlhf.trainer.ray.ppo_actor.PolicyModelActor.init_model_from_pretrained": (
        "strategy",
        "pretrain",
        "max_steps",
        "vllm_engines",
    ),
    "openrlhf.trainer.ray.ppo_actor.PolicyModelActor.forward": (
        "sequences",
        "action_mask",
        "attention_mask",
        "packed_seq_lens",
        "mm_train_inputs_list",
    ),
    "openrlhf.trainer.ray.ppo_actor.PolicyModelActor.fit": ("kl_ctl",),
    "openrlhf.trainer.ray.ppo_actor.PolicyModelActor.append": ("experience",),
    "openrlhf.trainer.ray.ppo_actor.PolicyModelActor.broadcast_to_vllm": (),
    "openrlhf.trainer.ray.ppo_actor.PolicyModelActor.save_checkpoint": (
        "tag",
        "client_states",
        "metric_value",
        "metric_key",
    ),
    "openrlhf.trainer.ray.ppo_actor.PolicyModelActor.get_checkpoint_states": (),
    "openrlhf.trainer.ray.ppo_critic.CriticModelActor.init_model_from_pretrained": (
        "strategy",
        "pretrain",
        "max_steps",
    ),
    "openrlhf.trainer.ray.ppo_critic.CriticModelActor.forward": (
        "sequences",
        "action_mask",
        "attention_mask",
        "packed_seq_lens",
    ),
    "openrlhf.trainer.ray.ppo_critic.CriticModelActor.fit": (),
    "openrlhf.trainer.ray.ppo_critic.CriticModelActor.save_checkpoint": ("tag", "metric_value", "metric_key"),
    "openrlhf.models.loss.PolicyLoss.forward": ("log_probs", "old_log_probs", "advantages", "action_mask"),
    "openrlhf.models.loss.ValueLoss.forward": ("values", "old_values", "returns", "action_mask"),
    "openrlhf.utils.loss_utils.iter_grad_accum_global_norm": (
        "data_iter",
        "strategy",
        "accumulated_gradient",
        "mask_fn",
    ),
    "openrlhf.trainer.ppo_utils.experience_maker.RemoteExperienceMaker.split_rollout_samples": ("rollout_samples",),
    "openrlhf.trainer.ppo_utils.experience_maker.RemoteExperienceMaker._dispatch_forward": ("group", "sync_condition"),
    "openrlhf.utils.deepspeed.deepspeed_utils.get_optimizer_grouped_parameters": ("model", "weight_decay"),
    "openrlhf.trainer.ray.ppo_actor.ActorPPOTrainer.training_step": (
        "experience",
        "kl_ctl",
        "step",
        "loss_batch_info",
    ),
    "openrlhf.trainer.ray.ppo_critic.CriticPPOTrainer.training_step": ("experience", "step", "loss_batch_info"),
    # The trainer and the CLI (trainer/ppo_trainer.py, cli/train_ppo_ray.py).
    "openrlhf.trainer.ppo_trainer.PPOTrainer.__init__": (
        "pretrain",
        "strategy",
        "actor_model_group",
        "critic_model_group",
        "reward_model_group",
        "reference_model_group",
        "vllm_engines",
    ),
    "openrlhf.trainer.ppo_trainer.PPOTrainer.save_logs_and_checkpoints": ("global_step", "logs_dict", "client_states"),
    "openrlhf.trainer.ppo_trainer.PPOTrainer.restore_best_checkpoint_state": ("checkpoint_states",),
    "openrlhf.trainer.ppo_utils.experience_maker.RemoteExperienceMaker.__init__": (
        "actor_model_group",
        "critic_model_group",
        "reward_model_group",
        "initial_model_group",
        "kl_controller",
        "strategy",
        "tokenizer",
    ),
    "openrlhf.cli.train_ppo_ray.train": ("args",),
    # Local CPU mode's evaluation and engine counters (local/trainer.py).
    "openrlhf.trainer.ppo_trainer.compute_eval_metrics": ("eval_dataloader", "samples_list", "n_samples_per_prompt"),
    "openrlhf.trainer.ppo_trainer.PPOTrainer.fit": ("global_step",),
    "openrlhf.trainer.ppo_trainer.PPOTrainer.train_step": ("rollout_samples", "global_step"),
    "openrlhf.trainer.ppo_trainer.PPOTrainer.evaluate": ("global_step",),
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator.generate_eval_samples": (),
    # Local CPU mode: the module globals `wiring.train_classes` rebinds (LOCAL_SEAMS).
    "openrlhf.trainer.ray.vllm_engine.RolloutRayActor": (),
    "openrlhf.trainer.ray.ppo_actor.PolicyModelActor": (),
    "openrlhf.trainer.ray.launcher.ReferenceModelActor": (),
    "openrlhf.trainer.ray.ppo_critic.CriticModelActor": (),
    # Upstream's prompt-batch collector (classes.collect_prompt_batch).
    "openrlhf.trainer.ppo_utils.samples_generator._collect_prompt_batch": ("dataloader_iter", "num_prompts"),
    # Reward function files (--reward.remote_url file.py; rollout_side.py).
    "openrlhf.utils.agent.SingleTurnAgentExecutor.__init__": ("remote_rm_url",),
    # The trainer's step (trainer/ppo_trainer.py).
    "openrlhf.trainer.ppo_trainer.BasePPOTrainer.train_step": ("rollout_samples", "global_step"),
}

# Upstream methods whose *behaviour* we rely on; a source change must be reviewed (tests/contract/test_upstream.py).
# Each comment says what we rely on and where.
BEHAVIOUR_PINNED = (
    # --- the engine actor and the samples generator
    "openrlhf.trainer.ray.vllm_engine.RolloutRayActor.generate",
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator._dispatch_prompts_to_vllm",
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator.generate_samples",
    # --- the trainer and the CLI (trainer/ppo_trainer.py, cli/train_ppo_ray.py)
    # Builds prompts_dataloader, eval_dataloader and samples_generator (whose tokenizer we reuse) before the base
    # constructor builds experience_maker from the attributes we pass again.
    "openrlhf.trainer.ppo_trainer.PPOTrainer.__init__",
    "openrlhf.trainer.ppo_trainer.BasePPOTrainer.__init__",
    # Per step: status gets timing/step_total, then save_logs_and_checkpoints(step, status, client_states); before
    # the first step restore_best_checkpoint_state(loaded states). train_step(samples, step) follows the rollout
    # directly and evaluate(step, **kwargs) comes after save_logs_and_checkpoints: local/trainer.py reads the engine
    # counters at these points.
    "openrlhf.trainer.ppo_trainer.PPOTrainer.fit",
    # Logs logs_dict and stores client_states in the actor checkpoint.
    "openrlhf.trainer.ppo_trainer.BasePPOTrainer.save_logs_and_checkpoints",
    # Imports PPOTrainer at call time and calls create_vllm_engines, which reads RolloutRayActor at call time: the two
    # rebinds of install_driver_patches take effect only because of this.
    "openrlhf.cli.train_ppo_ray.train",
    # Token streaming: make_experience sends the policy, critic and reference forwards through _dispatch_forward(group,
    # sync, sequences=, action_mask=, attention_mask=[, mm_train_inputs_list=]), one list item per micro-batch; the
    # maker's override routes groups with chunk-scored rows to darts_forward.
    "openrlhf.trainer.ppo_utils.experience_maker.RemoteExperienceMaker.make_experience",
    "openrlhf.trainer.ppo_utils.experience_maker.RemoteExperienceMaker._dispatch_forward",
    # --- local CPU mode's evaluation and engine counters (local/trainer.py)
    # Runs the whole eval dataloader through _generate_vllm with the generate kwargs it is given (temperature,
    # n_samples_per_prompt) and no dynamic filtering, waking the engines first and putting them back to sleep under
    # --vllm.enable_sleep, rollout.batch_size prompts per call: rollout_side.eval_samples_in_one_call mirrors it with
    # one call for the whole set.
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator.generate_eval_samples",
    # --- reward function files (--reward.remote_url file.py)
    # A remote_url ending in .py is loaded with importlib.util.spec_from_file_location (module name "reward_func") and
    # its `reward_func` attribute becomes executor.reward_func: bench.tasks, bench.gym_tasks and
    # examples/scripts/reward_math.py are such files.
    "openrlhf.utils.agent.SingleTurnAgentExecutor.__init__",
    # Calls reward_func(queries, prompts, labels) with one sample per call, each through asyncio.to_thread, i.e. from
    # a worker thread (no signal.alarm there: examples/scripts/reward_math.py bounds math-verify's time otherwise).
    "openrlhf.utils.agent.SingleTurnAgentExecutor._fetch_rewards_via_func",
    # --- upstream code mirrored in our tree
    # backends/cpu/policy.py, critic.py: upstream's training_step runs as is on the CPU actors (a CPU strategy
    # stands in for DeepSpeed's engine), and ppo_train's status reduction is mirrored in backends/cpu/ppo_status.py.
    "openrlhf.trainer.ray.ppo_actor.ActorPPOTrainer.training_step",
    "openrlhf.trainer.ray.ppo_actor.ActorPPOTrainer.ppo_train",
    "openrlhf.trainer.ray.ppo_critic.CriticPPOTrainer.training_step",
    "openrlhf.trainer.ray.ppo_critic.CriticPPOTrainer.ppo_train",
    # backends/cpu/base.py CpuReplayBuffer.__init__ sets the same fields without asking CUDA for a device.
    "openrlhf.trainer.ppo_utils.replay_buffer.NaiveReplayBuffer.__init__",
    # backends/cpu/base.py load_causal_lm / load_critic: fp32 loading with upstream's MoE router flag, use_cache off,
    # value-head precedence and fresh value head.
    "openrlhf.models.actor.Actor.__init__",
    "openrlhf.models.model.get_llm_for_sequence_regression",
    # trainer/samples_generator.py _generate_streaming: upstream's collection loop and dynamic-filtering rule, with
    # each accepted group handed to the streaming experience maker.
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator._generate_vllm",
    # --- tail batching, the comparison arm (openrlhf_darts/tail_batching.py, trainer/ and rollout/tail_*.py)
    # generate_tail_group runs what generate_responses runs (num_samples executor.execute calls, llm_engine=self), as
    # tasks it can stop.
    "openrlhf.trainer.ray.vllm_engine.RolloutRayActor.generate_responses",
    # The tail-batching generator keeps _generate_vllm's dynamic-filtering rule: a group is dropped only when every
    # sample has a score and their mean is not strictly inside the range, and each dropped group gets one replacement.
    # (SamplesGenerator._generate_vllm is pinned above, for the streaming collector; tail batching relies on it too.)
    # exhausted=True only when the iterator raised StopIteration while collecting (the epoch's end).
    "openrlhf.trainer.ppo_utils.samples_generator._collect_prompt_batch",
    # --- loud failures (rollout/rollout_actor.py)
    # rollout/rollout_actor.py: the executor calls llm_engine.generate once, then the reward; a failed reward call is
    # caught, logged on `executor_logger()` at info level and returned as reward=None (the actor then fails the
    # step with that message).
    "openrlhf.utils.agent.SingleTurnAgentExecutor.execute",
)

# What upstream's `training_step` reads from `self` (ppo_actor.py / ppo_critic.py @0.11.2) besides `args`, `strategy`
# and `replay_buffer`, and what it asks of `self.strategy`. The CPU actors define every one of them (the strategy in
# backends/cpu/strategy.py); tests/contract/test_upstream.py checks that the sources read nothing else.
TRAINING_STEP_STRATEGY = ("backward", "optimizer_step", "get_grad_norm", "ring_attn_group", "moving_average")
TRAINING_STEP_ATTRIBUTES = {
    "openrlhf.trainer.ray.ppo_actor.ActorPPOTrainer.training_step": (
        "actor",
        "actor_loss_fn",
        "actor_optim",
        "actor_scheduler",
        "aux_loss",
        "ema_model",
        "ema_beta",
    ),
    "openrlhf.trainer.ray.ppo_critic.CriticPPOTrainer.training_step": (
        "critic",
        "critic_loss_fn",
        "critic_optim",
        "critic_scheduler",
        "aux_loss",
    ),
}

# --- upstream attributes we read or rebind (the doors to them are in rollout_side.py) ---
# "module.Class.attribute" -> the method whose source assigns it (`self.<attribute> = ...`); the contract test reads
# that source, so a rename upstream fails there instead of as an AttributeError inside a run.
ATTRIBUTES = {
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator._dataloader_iter": (
        "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator.generate_samples"
    ),
    "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator.eval_dataloader": (
        "openrlhf.trainer.ppo_utils.samples_generator.SamplesGenerator.__init__"
    ),
    "openrlhf.trainer.ray.vllm_engine.RolloutRayActor.llm": (
        "openrlhf.trainer.ray.vllm_engine.RolloutRayActor.__init__"
    ),
    "openrlhf.utils.agent.SingleTurnAgentExecutor.reward_endpoints": (
        "openrlhf.utils.agent.SingleTurnAgentExecutor.__init__"
    ),
    "openrlhf.datasets.prompts_dataset.PromptDataset.prompts": (
        "openrlhf.datasets.prompts_dataset.PromptDataset.__init__"
    ),
    "vllm.v1.engine.async_llm.AsyncLLM.vllm_config": "vllm.v1.engine.async_llm.AsyncLLM.__init__",
}

# --- local CPU mode (openrlhf_darts.local) ---
# Module globals `openrlhf.cli.train_ppo_ray` binds when it runs as __main__ (its imports read them at that moment) or
# reads at call time (trainer, engine actor). Rebinding them is how the local mode runs upstream's own `train()`.
LOCAL_SEAMS = {
    "trainer": ("openrlhf.trainer.ppo_trainer", "PPOTrainer"),
    "rollout": ("openrlhf.trainer.ray.vllm_engine", "RolloutRayActor"),
    "policy": ("openrlhf.trainer.ray.ppo_actor", "PolicyModelActor"),
    "reference": ("openrlhf.trainer.ray.launcher", "ReferenceModelActor"),
    "critic": ("openrlhf.trainer.ray.ppo_critic", "CriticModelActor"),
}


def resolve(dotted: str):
    """The object a dotted path names, unwrapping Ray actor classes on the way."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
            obj = getattr(obj, "__ray_actor_class__", obj)
        return obj
    raise ImportError(dotted)
