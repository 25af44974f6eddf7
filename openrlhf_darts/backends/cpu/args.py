"""An OpenRLHF args namespace for driving the CPU backend outside upstream's CLI (tests, benchmarks).

Upstream builds its parser under `if __name__ == "__main__":`, so nothing can import it. `cpu_args` returns the slice of
the hierarchized namespace that the CPU model actors, `get_strategy`, the samples generator and the experience maker
read, with upstream 0.11.2's defaults (train_ppo_ray.py) except where a CPU run needs otherwise (noted inline).
The local training mode goes through upstream's real CLI instead (openrlhf_darts/local/train.py).
"""

from __future__ import annotations

from types import SimpleNamespace as NS

from openrlhf_darts.config import default_flags


def _optim(lr: float) -> dict:
    return dict(
        optim="adam",
        adam=NS(lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0),
        muon=NS(),
        lr_scheduler="constant",  # upstream: cosine_with_min_lr with 3% warmup; constant keeps short runs readable
        lr_warmup_ratio=0.0,
        min_lr_ratio=0.1,
        max_norm=1.0,
    )


def cpu_args(model_path: str, work_dir: str, **overrides) -> NS:
    """The namespace; `overrides` maps dotted names ("rollout.batch_size", "algo.kl.use_loss") to values."""
    args = NS(
        local_rank=-1,
        ds=NS(
            param_dtype="bf16",  # read by DeepspeedStrategy; CPU actors load fp32 regardless
            zero_stage=2,
            attn_implementation="sdpa",
            packing_samples=False,
            ring_attn_size=1,
            tensor_parallel_size=1,
            value_head_prefix="score",
            lora=NS(rank=0),
            experts_implementation=None,
            enable_sleep=False,
        ),
        train=NS(
            seed=42,
            micro_batch_size=2,
            batch_size=8,
            max_epochs=1,
            dynamic_batch_enable=False,
            enable_ema=False,
            colocate_all=False,
            colocate_actor_ref=False,
            colocate_critic_reward=False,
            async_enable=False,
            partial_rollout_enable=False,
            full_determinism_enable=False,
        ),
        rollout=NS(
            temperature=1.0,
            n_samples_per_prompt=4,
            micro_batch_size=2,
            batch_size=2,
            max_tokens_per_gpu=None,
            vllm_generate_batch_size=None,
        ),
        actor=NS(
            model_name_or_path=model_path,
            eps_clip_low_high=(0.2, 0.2),
            dual_clip=None,
            loss_agg_mode="token-mean",
            policy_loss_type="ppo",
            entropy_coef=None,
            gradient_checkpointing_enable=False,
            aux_loss_coef=0.0,
            num_nodes=1,
            num_gpus_per_node=1,
            **_optim(1e-6),
        ),
        critic=NS(
            model_name_or_path=model_path, value_clip=0.5, save_value_network=False, freezing_steps=-1, **_optim(9e-6)
        ),
        algo=NS(
            advantage=NS(
                estimator="group_norm",
                is_correction_level="off",
                is_correction_mode="mask",
                is_correction_gating="ratio",
                is_correction_threshold=[0.5, 5.0],
                gamma=1.0,
                lambd=1.0,
                no_std_norm=False,
            ),
            kl=NS(use_loss=False, init_coef=0.01, estimator="k1", unbiased_gradient=False, target=None),
            dynamic_filtering_enable=False,
            dynamic_filtering_range=[0.0, 1.0],
        ),
        reward=NS(
            normalize_enable=False,
            clip_range=(-10, 10),
            overlong_buffer_len=None,
            overlong_penalty_factor=1.0,
            stop_properly_penalty_coef=None,
        ),
        data=NS(max_len=512),
        ckpt=NS(
            path=f"{work_dir}/ckpt",
            disable_ds=False,
            max_num=2,
            load_enable=False,
            save_hf=False,
            output_dir=f"{work_dir}/out",
        ),
        vllm=NS(enable_prefix_caching=True, enable_sleep=False),
        darts=NS(**default_flags()),  # as upstream's parser with our flags registered and none given
    )
    for dotted, value in overrides.items():
        *path, leaf = dotted.split(".")
        target = args
        for part in path:
            target = getattr(target, part)
        if not hasattr(target, leaf):
            raise ValueError(f"override {dotted!r} names no field of the namespace; check the upstream flag name")
        setattr(target, leaf, value)
    return args
