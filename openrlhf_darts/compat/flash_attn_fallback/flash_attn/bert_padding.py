"""Pure-PyTorch versions of the flash_attn.bert_padding helpers OpenRLHF uses to pack and unpack padded batches.

Vocabulary: a padded batch has shape ``(batch, seqlen, ...)`` with an attention mask ``(batch, seqlen)``; "unpadded" means
the masked-in positions only, flattened row by row into ``(nnz, ...)``. ``indices`` are their positions in the flattened
``batch * seqlen`` grid, which is all ``pad_input`` needs to undo the packing.

The real module implements these with custom autograd functions for speed on GPU. Plain ``index_select`` and out-of-place
``index_copy`` have the same values and gradients (the gradient of a gathered row goes back to that row, every other row
gets zero), so the fallback uses them and stays short.
"""

import torch
from einops import rearrange

__all__ = ["index_first_axis", "pad_input", "rearrange", "unpad_input"]


def _check_indices(indices: torch.Tensor) -> None:
    if indices.dim() != 1 or indices.dtype.is_floating_point or indices.dtype == torch.bool:
        raise ValueError(
            f"indices must be a 1-D integer tensor, got dtype {indices.dtype} and shape {tuple(indices.shape)}"
        )


def index_first_axis(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Rows ``x[indices]``: ``(N, ...)`` -> ``(len(indices), ...)``; differentiable, zero gradient for rows not picked."""
    _check_indices(indices)
    return x.index_select(0, indices.long())


def unpad_input(
    hidden_states: torch.Tensor, attention_mask: torch.Tensor, unused_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """Drop the masked-out positions of a padded batch.

    Returns ``(hidden_unpadded (nnz, ...), indices int64 (nnz,), cu_seqlens int32 (batch + 1,), max_seqlen int,
    seqused int32 (batch,))``. ``cu_seqlens`` are the cumulative per-row token counts starting at 0, which is what
    varlen attention kernels take to find each sequence.

    ``unused_mask`` (tokens that occupy space but are not attended to) is never passed by OpenRLHF; it is rejected rather
    than ignored because ignoring it would silently return wrong lengths.
    """
    if unused_mask is not None:
        raise ValueError(
            f"unused_mask={type(unused_mask).__name__} given; the flash_attn CPU fallback supports unpad_input only "
            "without unused_mask (OpenRLHF never passes one); install the real flash-attn on a GPU machine"
        )
    if attention_mask.dim() != 2 or hidden_states.shape[:2] != attention_mask.shape:
        raise ValueError(
            f"expected hidden_states (batch, seqlen, ...) and attention_mask (batch, seqlen), got "
            f"{tuple(hidden_states.shape)} and {tuple(attention_mask.shape)}"
        )
    seqused = attention_mask.sum(dim=-1, dtype=torch.int32)  # (batch,)
    indices = torch.nonzero(attention_mask.flatten(), as_tuple=False).flatten()  # int64 (nnz,)
    max_seqlen = int(seqused.max().item()) if seqused.numel() else 0
    cu_seqlens = torch.nn.functional.pad(torch.cumsum(seqused, dim=0, dtype=torch.int32), (1, 0))  # (batch + 1,)
    flat = rearrange(hidden_states, "b s ... -> (b s) ...")
    return index_first_axis(flat, indices), indices, cu_seqlens, max_seqlen, seqused


def pad_input(hidden_states: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """Inverse of :func:`unpad_input`: ``(nnz, ...)`` -> ``(batch, seqlen, ...)`` with zeros at the positions not in
    ``indices``. Differentiable with respect to ``hidden_states``."""
    _check_indices(indices)
    if hidden_states.shape[0] != indices.shape[0]:
        raise ValueError(f"hidden_states has {hidden_states.shape[0]} rows but indices has {indices.shape[0]}")
    zeros = hidden_states.new_zeros((batch * seqlen, *hidden_states.shape[1:]))
    flat = zeros.index_copy(0, indices.long(), hidden_states)
    return rearrange(flat, "(b s) ... -> b s ...", b=batch)
