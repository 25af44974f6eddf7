"""The one door to OpenRLHF internals (pipeline: every step; upstream computes advantages and trains).

Everything this package relies on inside OpenRLHF 0.11.2 is named here, split by job:

- `contract`: the version guard (`SUPPORTED_OPENRLHF`, `check_version`) and the contract data, declared once
  (`CONTRACT`, `BEHAVIOUR_PINNED`, `TRAINING_STEP_*`, `ATTRIBUTES`, `LOCAL_SEAMS`; `resolve`).
  `tests/contract/test_upstream.py` asserts every entry, so an upgrade fails loudly in one place;
- `classes`: the upstream classes and functions we extend or call (engine actor, samples generator, experience maker,
  trainer base, prompt-batch collector);
- `wiring`: class rebinding, entry-point wiring and argparse patching (`--darts.*` in upstream's own CLI);
- `model_actors`: the model-side namespace (model actors, losses, strategy, actor groups);
- `rollout_side`: the engine-side doors (sampling params, the engine's `llm`, the reward executor, the dataloader).

Every name is re-exported here: `from openrlhf_darts import upstream; upstream.X`. Importing this package imports
OpenRLHF (after the version check and the CPU flash_attn fallback, both in `contract`); importing `openrlhf_darts` or
`openrlhf_darts.config` does not.
"""

from __future__ import annotations

# The version guard and the flash_attn fallback run when `contract` is imported: before anything imports OpenRLHF.
from openrlhf_darts.upstream.contract import (  # noqa: F401
    ATTRIBUTES,
    BEHAVIOUR_PINNED,
    CONTRACT,
    LOCAL_SEAMS,
    SUPPORTED_OPENRLHF,
    TRAINING_STEP_ATTRIBUTES,
    TRAINING_STEP_STRATEGY,
    check_version,
    resolve,
)

# isort: split
from openrlhf_darts.upstream.classes import (  # noqa: F401
    Experience,
    RemoteExperienceMaker,
    RolloutRayActorBase,
    SamplesGenerator,
    batch_vllm_engine_call,
    collect_prompt_batch,
    create_vllm_engines,
    ppo_trainer_base,
)
from openrlhf_darts.upstream.model_actors import (  # noqa: F401
    actor_class,
    actor_handles,
    compute_eval_metrics,
    effective_actors,
    fixed_kl_controller,
    gpu_model_actor_bases,
    model_side,
    model_side_strategy,
)
from openrlhf_darts.upstream.rollout_side import (  # noqa: F401
    dataset_prompts,
    engine_llm,
    engine_vllm_config,
    eval_samples_in_one_call,
    executor_logger,
    reward_endpoints,
    reward_file_executor,
    rollout_sampling_params,
    score_like_engine,
    training_dataloader_iter,
    wrap_engine_llm,
)
from openrlhf_darts.upstream.wiring import (  # noqa: F401
    darts_flags_in_upstream_cli,
    install_chunked_model_actors,
    install_driver_patches,
    rollout_actor_class,
    train_classes,
)
