"""A vLLM engine actor on CPU: the engine arguments upstream's GPU defaults get wrong there; weight sync without NCCL.

- **dtype float32.** The CPU backend's bf16 output is wrong (docs/design.md, "CPU specifics"); upstream hard-codes bf16
  for GPUs.
- **KV cache size and `max_num_seqs`** from the environment (`settings.engine_kwargs`, validated there).
- **Weight sync** through bytes payloads and `collective_rpc` (`worker_extension.CpuWorkerWrap`): tensors cannot cross
  `collective_rpc` on CPU, and there is neither NCCL nor CUDA IPC. `CpuWeightSync` gives the engine actor the remote
  method the CPU policy actor calls (`update_weights_from_lists`); `engine_kwargs` selects the worker extension.

The engine actor takes both through one hook, `backends.engine_kwargs`, and one base class.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def engine_kwargs(kwargs: dict) -> dict:
    """The engine actor's constructor kwargs for a CPU engine: float32, the KV cache and `max_num_seqs` settings (a
    value the caller set wins), the CPU worker extension. Returns a new dict."""
    from openrlhf_darts.backends.cpu import settings
    from openrlhf_darts.backends.cpu.worker_extension import EXTENSION_PATH

    kwargs = dict(kwargs)
    if kwargs.get("dtype") != "float32":
        logger.warning("vLLM CPU backend: dtype %s -> float32 (CPU bf16 output is wrong)", kwargs.get("dtype"))
        kwargs["dtype"] = "float32"
    for key, value in settings.engine_kwargs().items():
        kwargs.setdefault(key, value)
    kwargs["worker_extension_cls"] = EXTENSION_PATH
    return kwargs


class CpuWeightSync:
    """Mixin of the engine actor: the CPU weight sync's remote method (backends/cpu/policy.py calls it)."""

    async def update_weights_from_lists(self, named_payloads: list, final: bool = True) -> list[int]:
        """CPU weight sync: `[(name, dtype, shape, bytes)]` to every worker; `final` loads the buffered sync
        (backends/cpu/worker_extension.py)."""
        from openrlhf_darts import upstream

        llm = upstream.engine_llm(self)
        return await llm.collective_rpc("update_weights_from_lists", args=(named_payloads, final))
