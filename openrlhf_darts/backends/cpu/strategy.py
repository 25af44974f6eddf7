"""`CpuStrategy`: what upstream's `training_step` asks of its DeepSpeed strategy, done on CPU.

The CPU policy and critic actors run upstream's own `training_step` (ppo_actor.py / ppo_critic.py @0.11.2, called
through `upstream.model_side()`), so the loss, the KL and entropy terms, the MoE auxiliary loss and the status keys
are upstream's. That method reaches the optimizer only through `self.strategy` (`upstream.TRAINING_STEP_STRATEGY`):

- `backward(loss, model, optimizer)`: DeepSpeed's engine scales the loss by 1/gradient-accumulation steps (gas) and
  accumulates gradients; here `(loss / gas).backward()`.
- `optimizer_step(optimizer, model, scheduler, name)`: DeepSpeed steps only at a gas boundary; here too, and also after
  the last micro-batch of a `fit` (`flush_next_step`), so no gradient is carried into the next step's update. At a
  step: gradients averaged over the data-parallel ranks (gloo), clipped to `max_norm`, AdamW, scheduler, zero_grad.
- `get_grad_norm(model)`: the pre-clipping global norm of the last optimizer step, as DeepSpeed reports it.
- `ring_attn_group`: None (no ring attention on CPU).

`all_reduce` serves the mirrored status reduction of `ppo_train` (ppo_status.py). Everything else a CPU actor reads
from its strategy (`args`, `is_rank_0`) is upstream's `DeepspeedStrategy`, which is never set up on CPU.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class CpuStrategy:
    def __init__(self, strategy, world_size: int):
        self._upstream = strategy
        self.args = strategy.args
        self.world_size = world_size
        self.ring_attn_group = None
        train = self.args.train
        # DeepSpeed's gas: train batch / micro batch / DP size (ring and tensor parallel sizes are 1 on CPU).
        self.accumulated_gradient = max(1, train.batch_size // train.micro_batch_size // world_size)
        self.max_norm = 1.0  # set per model by the actor (`--actor.max_norm` / `--critic.max_norm`)
        self.grad_norm = 0.0
        self.flush_next_step = False
        self._micro_steps = 0

    def is_rank_0(self) -> bool:
        return self._upstream.is_rank_0()

    def backward(self, loss: torch.Tensor, model, optimizer) -> None:
        (loss / self.accumulated_gradient).backward()

    def optimizer_step(self, optimizer, model, scheduler, name: str = "model") -> None:
        self._micro_steps += 1
        flush, self.flush_next_step = self.flush_next_step, False
        if self._micro_steps % self.accumulated_gradient != 0 and not flush:
            return
        self._micro_steps = 0
        params = [p for p in model.parameters() if p.requires_grad]
        if self.world_size > 1:
            for p in params:
                if p.grad is not None:
                    dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                    p.grad.div_(self.world_size)
        max_norm = self.max_norm if self.max_norm and self.max_norm > 0 else float("inf")
        self.grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    def get_grad_norm(self, model) -> float:
        return self.grad_norm

    def moving_average(self, *args, **kwargs) -> None:
        raise ValueError("--train.enable_ema is not implemented by the CPU backend; drop it for CPU runs")

    def all_reduce(self, data: dict[str, float], op: str = "mean") -> dict[str, float]:
        """Upstream's `DeepspeedStrategy.all_reduce` of a dict of floats over the DP ranks (float32, like upstream)."""
        if op not in ("mean", "sum"):
            raise ValueError(f"op={op!r}: the CPU strategy reduces with mean or sum")
        keys = list(data)
        values = torch.tensor([float(data[k]) for k in keys], dtype=torch.float32)
        if op == "mean":
            values /= self.world_size
        if self.world_size > 1:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return {k: values[i].item() for i, k in enumerate(keys)}
