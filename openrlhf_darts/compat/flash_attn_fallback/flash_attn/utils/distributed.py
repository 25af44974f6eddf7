"""``all_gather`` over ``torch.distributed`` for the flash_attn CPU fallback.

OpenRLHF calls it only to re-assemble ring-attention shards, which needs a ring-attention group and therefore CUDA-only
ring-flash-attn. It is still implemented for real (it works with gloo) so the contract holds if someone builds a group by
hand, and it raises a clear error when there is no process group at all.
"""

import torch
import torch.distributed as dist

__all__ = ["all_gather"]


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's tensor along dim 0 in rank order; the backward hands each rank the gradient of its slice.

    The real kernel's backward is a reduce-scatter. gloo has no reduce-scatter, so the backward sums the full gradient
    over ranks with ``all_reduce`` and keeps this rank's rows, which is the same value.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: torch.Tensor, group: dist.ProcessGroup | None):
        ctx.group = group
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor):
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        rows = grad.shape[0] // dist.get_world_size(ctx.group)
        rank = dist.get_rank(ctx.group)
        return grad[rank * rows : (rank + 1) * rows], None


def all_gather(tensor: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Gather ``tensor`` (same shape on every rank) from all ranks of ``group``; result ``(world * N, ...)``, rank order.

    ``group=None`` means the default process group. Differentiable.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "flash_attn.utils.distributed.all_gather (CPU fallback) needs torch.distributed: call "
            "torch.distributed.init_process_group (e.g. backend='gloo') first. OpenRLHF only reaches it with ring "
            "attention, which is not available on CPU."
        )
    return _AllGather.apply(tensor, group)
