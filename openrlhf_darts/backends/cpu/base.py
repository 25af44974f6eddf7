"""What every CPU model actor shares: process setup, fp32 model loading, the optimizer and checkpoints.

`CpuModelActorBase` extends upstream's plain `BaseModelActor` (not a Ray class), so the Ray-group protocol
(`execute_batch`, `get_master_addr_port`, the MASTER_ADDR/RANK environment `RayActorGroup` relies on) is upstream's own.
It replaces only what touches CUDA: distributed setup (gloo instead of DeepSpeed/NCCL), `empty_cache`, and the
DeepSpeed engine, whose backward / optimizer step `CpuStrategy` does for upstream's own `training_step` (strategy.py).
Checkpoints hold the model, the optimizer, the scheduler and the number of `fit` calls (which seeds the replay-buffer
shuffle), so a resumed run trains exactly as an uninterrupted one would (tests/contract/test_resume.py).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import shutil

import torch
import torch.distributed as dist

from openrlhf_darts import upstream
from openrlhf_darts.backends.cpu import settings
from openrlhf_darts.backends.cpu.strategy import CpuStrategy

logger = logging.getLogger(__name__)
_UP = upstream.model_side()
CPU_ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


def cpu_attn_implementation(requested: str) -> str:
    """The attention kernel of a CPU forward: sdpa/eager as asked; flash-attention has no CPU kernel -> sdpa."""
    if requested in CPU_ATTN_IMPLEMENTATIONS:
        return requested
    logger.warning("--ds.attn_implementation=%s has no CPU kernel; CPU model actors use sdpa", requested)
    return "sdpa"


def check_cpu_args(args) -> None:
    """Reject upstream settings the CPU backend cannot honour, before any model loads."""
    if args.ds.packing_samples:
        raise ValueError(
            "--ds.packing_samples=True needs flash-attention kernels, which do not exist on CPU; drop "
            "--ds.packing_samples for the CPU backend"
        )
    if args.train.dynamic_batch_enable:
        raise ValueError(
            "--train.dynamic_batch_enable forces sample packing, which the CPU backend cannot run; drop "
            "--train.dynamic_batch_enable"
        )
    if args.ds.ring_attn_size != 1 or args.ds.tensor_parallel_size != 1:
        raise ValueError(
            f"--ds.ring_attn_size={args.ds.ring_attn_size} / --ds.tensor_parallel_size={args.ds.tensor_parallel_size}: "
            "the CPU backend runs plain data parallelism only; set both to 1"
        )


def reject_multimodal(mm_train_inputs_list) -> None:
    """Upstream passes `[[None], ...]` for text samples (it checks `is_vlm` inside); real images cannot run here."""
    for item in mm_train_inputs_list or []:
        if any(part is not None for part in (item if isinstance(item, list) else [item])):
            raise ValueError("multimodal inputs are not supported by the CPU backend; use the GPU actors")


class CpuModelActorBase(_UP.BaseModelActor):
    """Shared by the CPU policy, reference and critic actors."""

    def _setup_distributed(self, strategy) -> None:
        # Upstream calls DeepSpeed's init (CUDA device, NCCL); here: a seed, a thread budget, and gloo for DP > 1.
        self.args = strategy.args
        check_cpu_args(self.args)
        torch.manual_seed(self.args.train.seed)
        torch.set_num_threads(settings.model_actor_threads())
        if self._world_size > 1 and not dist.is_initialized():
            dist.init_process_group("gloo", rank=self._rank, world_size=self._world_size)
        self.strategy = CpuStrategy(strategy, self._world_size)

    def empty_cache(self) -> None:
        gc.collect()

    def reload_states(self) -> None:
        """Sleep mode is a GPU-memory feature; CPU actors keep their states in place."""

    def offload_states(self) -> None:
        """See `reload_states`."""

    @property
    def world_size(self) -> int:
        return self._world_size

    # ---- training -----------------------------------------------------------------------------------------------
    def _build_optimizer(self, model: torch.nn.Module, cfg, max_steps: int | None) -> None:
        """AdamW with upstream's parameter groups and upstream's scheduler (`transformers.get_scheduler`)."""
        from transformers.trainer import get_scheduler

        if cfg.optim != "adam":
            raise ValueError(f"--*.optim={cfg.optim!r}: the CPU backend implements adam only; use --actor.optim adam")
        if max_steps is None or max_steps < 1:
            raise ValueError(f"max_steps={max_steps!r}: the learning-rate schedule needs the number of training steps")
        adam = cfg.adam
        self.optimizer = torch.optim.AdamW(
            _UP.get_optimizer_grouped_parameters(model, adam.weight_decay),
            lr=adam.lr,
            betas=tuple(adam.betas),
            eps=adam.eps,
        )
        scheduler_kwargs = (
            {"min_lr_rate": cfg.min_lr_ratio}
            if cfg.lr_scheduler in {"cosine_with_min_lr", "cosine_warmup_with_min_lr"}
            else {}
        )
        self.scheduler = get_scheduler(
            cfg.lr_scheduler,
            self.optimizer,
            num_warmup_steps=math.ceil(max_steps * cfg.lr_warmup_ratio),
            num_training_steps=max_steps,
            scheduler_specific_kwargs=scheduler_kwargs,
        )
        self.strategy.max_norm = cfg.max_norm
        self._fit_calls = 0

    def _micro_batches(self, buffer, epoch: int) -> list:
        """(experience, loss_batch_info) pairs over the replay buffer, normalized per optimizer step by upstream.

        Upstream's `ppo_train` shuffles with the global RNG; here the order is seeded by the seed, the `fit` call and
        the epoch, so two runs (and a resumed run) draw the same micro-batches.
        """
        from torch.utils.data import DataLoader

        generator = torch.Generator().manual_seed(self.args.train.seed + 1000 * self._fit_calls + epoch)
        loader = DataLoader(
            buffer,
            batch_size=buffer.sample_batch_size,
            shuffle=True,
            drop_last=True,
            collate_fn=buffer.collate_fn,
            generator=generator,
        )
        gas = self.strategy.accumulated_gradient
        return list(_UP.iter_grad_accum_global_norm(loader, self.strategy, gas, lambda e: e.action_mask))

    def _check_aux_loss(self, model: torch.nn.Module) -> None:
        """`--actor.aux_loss_coef` > 0 adds the MoE balancing loss, which only mixture-of-experts models produce."""
        coef = self.args.actor.aux_loss_coef
        if coef > 1e-8 and "output_router_logits" not in model.config.to_dict():
            raise ValueError(
                f"--actor.aux_loss_coef={coef} adds the mixture-of-experts balancing loss, but "
                f"{type(model).__name__} has no router (its config has no output_router_logits); set "
                "--actor.aux_loss_coef 0 for dense models"
            )

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def _save_states(self, subdir: str, tag: str, model: torch.nn.Module, client_states: dict | None) -> None:
        """Model, optimizer and scheduler of rank 0 under `<ckpt.path>/<subdir>/<tag>`; keeps `--ckpt.max_num` tags."""
        ckpt = self.args.ckpt
        if ckpt.disable_ds or self._rank != 0:
            return
        root = os.path.join(ckpt.path, subdir)
        path = os.path.join(root, tag)
        os.makedirs(path, exist_ok=True)
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "fit_calls": self._fit_calls,
                "client_states": client_states or {},
            },
            os.path.join(path, "states.pt"),
        )
        tags = _read_tags(root)
        tags = [t for t in tags if t != tag] + [tag]
        while len(tags) > ckpt.max_num:
            shutil.rmtree(os.path.join(root, tags.pop(0)), ignore_errors=True)
        with open(os.path.join(root, "latest.json"), "w") as f:
            json.dump(tags, f)

    def _load_states(self, subdir: str, model: torch.nn.Module) -> dict:
        """Restore the latest tag when `--ckpt.load_enable` and one exists; returns its client_states (or {})."""
        ckpt = self.args.ckpt
        root = os.path.join(ckpt.path, subdir)
        tags = _read_tags(root) if ckpt.load_enable else []
        if not tags:
            return {}
        states = torch.load(os.path.join(root, tags[-1], "states.pt"), weights_only=False)
        model.load_state_dict(states["model"])
        self.optimizer.load_state_dict(states["optimizer"])
        self.scheduler.load_state_dict(states["scheduler"])
        if "fit_calls" not in states:
            raise ValueError(
                f"{os.path.join(root, tags[-1], 'states.pt')} has no fit_calls (written by an older openrlhf_darts): "
                "the replay-buffer shuffle of the next steps cannot be restored; start from a new --ckpt.path"
            )
        self._fit_calls = states["fit_calls"]
        logger.info("loaded CPU checkpoint %s", os.path.join(root, tags[-1]))
        return states["client_states"]


def _read_tags(root: str) -> list[str]:
    index = os.path.join(root, "latest.json")
    if not os.path.exists(index):
        return []
    with open(index) as f:
        return list(json.load(f))


class CpuReplayBuffer(_UP.NaiveReplayBuffer):
    """Upstream's replay buffer (append/split/unpad/collate) with its CUDA target device replaced by the CPU.

    Mirrors replay_buffer.py@0.11.2 `NaiveReplayBuffer.__init__` (pinned in `upstream.BEHAVIOUR_PINNED`; the contract
    test also checks that both set the same fields): upstream's asks `torch.cuda.current_device()`, this one sets the
    same fields without it. Packing and dynamic batching are rejected on CPU (`check_cpu_args`).
    """

    def __init__(self, sample_batch_size: int, limit: int = 0) -> None:
        self.sample_batch_size = sample_batch_size
        self.limit = limit
        self.cpu_offload = True
        self.packing_samples = False
        self.target_device = torch.device("cpu")
        self.items = []
        self.dynamic_batch = False
        self.dynamic_indices = []
        self.dynamic_sample_loss_scale = []
        self.dynamic_batch_num_tokens = []
        self.dynamic_global_batch_size = []
        self.dynamic_optimizer_step = []


def load_causal_lm(pretrain: str, args):
    """Upstream's `Actor` around an fp32 Hugging Face causal LM (upstream's loader knows bf16/fp16 only).

    Mirrors the loading branch of actor.py@0.11.2 `Actor.__init__` (pinned): MoE models return their router logits,
    so upstream's `training_step` can add the balancing loss; no KV cache in full-sequence forwards.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        pretrain,
        torch_dtype=torch.float32,
        attn_implementation=cpu_attn_implementation(args.ds.attn_implementation),
        trust_remote_code=True,
    )
    if "output_router_logits" in model.config.to_dict():
        model.config.output_router_logits = True
    model.config.use_cache = False  # as upstream: full-sequence forwards; chunked scoring passes its own cache
    actor = _UP.Actor(model, temperature=args.rollout.temperature)
    actor.packing_samples = False  # upstream sets this only on its own loading branch
    return actor


def load_critic(pretrain: str, args):
    """Upstream's critic class (value head on the base model), built in fp32 on CPU.

    Mirrors model.py@0.11.2 `get_llm_for_sequence_regression` (pinned) for the critic: config flags, value-head prefix
    precedence, the MoE router flag, use_cache off, and a fresh value head when the critic starts from the policy.
    """
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(pretrain, trust_remote_code=True)
    config.normalize_reward = args.reward.normalize_enable
    config._attn_implementation = cpu_attn_implementation(args.ds.attn_implementation)
    prefix = getattr(config, "value_head_prefix", args.ds.value_head_prefix)  # upstream's precedence
    base_class = AutoModel._model_mapping[type(config)]
    critic_cls = _UP.critic_model_class(base_class.__base__, base_class, prefix, False)
    critic = critic_cls.from_pretrained(pretrain, config=config, torch_dtype=torch.float32, trust_remote_code=True)
    if "output_router_logits" in critic.config.to_dict():
        critic.config.output_router_logits = True
    critic.config.use_cache = False
    if args.actor.model_name_or_path == args.critic.model_name_or_path:
        # Upstream initializes a fresh value head when the critic starts from the policy checkpoint.
        getattr(critic, prefix).weight.data.normal_(mean=0.0, std=1 / (config.hidden_size + 1))
    return critic
