"""Weight sync into a vLLM CPU engine: a worker extension that loads weights sent as bytes through `collective_rpc`.

Upstream's `WorkerWrap` receives weights over NCCL or CUDA IPC, neither of which exists on CPU, and a tensor argument
to `collective_rpc` fails there ("cannot pickle memoryview objects"). `CpuWorkerWrap` extends it with
`update_weights_from_lists`, whose payload is `[(name, dtype, shape, data)]` with `data` the raw bytes (or a flat list)
of the tensor, and hands the rebuilt tensors to the model runner's own `load_weights` (HF parameter names).
`DartsRolloutActor` selects this extension on the CPU platform.
"""

from __future__ import annotations

import torch
from openrlhf.trainer.ray.vllm_worker_wrap import (  # not via upstream/: the engine process must not import DeepSpeed
    WorkerWrap,
)

# (name, dtype name, shape, bytes or flat list)
WeightPayload = tuple[str, str, list[int], "bytes | list[float]"]
EXTENSION_PATH = "openrlhf_darts.backends.cpu.worker_extension.CpuWorkerWrap"


def weight_payload(name: str, tensor) -> WeightPayload:
    """A picklable, tensor-free description of one parameter."""
    data = tensor.detach().to("cpu").contiguous()
    return name, str(data.dtype).removeprefix("torch."), list(data.shape), data.numpy().tobytes()


def payload_tensor(payload: WeightPayload):
    """Rebuild the tensor of one payload."""
    import torch

    name, dtype_name, shape, data = payload
    dtype = getattr(torch, dtype_name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"weight {name!r}: dtype {dtype_name!r} is not a torch dtype")
    if isinstance(data, (bytes, bytearray)):
        tensor = torch.frombuffer(bytearray(data), dtype=dtype)
    elif isinstance(data, list):
        tensor = torch.tensor(data, dtype=dtype)
    else:
        raise TypeError(f"weight {name!r}: data of type {type(data).__name__}; send bytes or a flat list")
    expected = 1
    for dim in shape:
        expected *= dim
    if tensor.numel() != expected:
        raise ValueError(f"weight {name!r}: {tensor.numel()} values for shape {shape}")
    return tensor.reshape(shape)


class CpuWorkerWrap(WorkerWrap):
    """Buffers the payloads of one sync, then reloads them through vLLM's layerwise reload.

    vLLM's CPU backend repacks every linear weight for its GEMM kernels after loading and drops the plain parameter, so
    a bare `model.load_weights` fails ("'Parameter' object has no attribute 'weight_loader'"). The model runner's
    `reload_weights(is_checkpoint_format=True)` restores the checkpoint layout, loads, and re-runs the repacking layer
    by layer; a layer must receive all its weights in one reload, hence the buffer until `final=True`.
    """

    def update_weights_from_lists(self, named_payloads: list[WeightPayload], final: bool = True) -> int:
        """Add the payloads to this sync; on `final`, load everything buffered. Returns the tensors loaded."""
        pending = self.__dict__.setdefault("_darts_pending_weights", [])
        for payload in named_payloads:
            tensor = payload_tensor(payload)
            if tensor.dtype != self.model_config.dtype:
                raise ValueError(
                    f"weight {payload[0]!r} has dtype {tensor.dtype} but the engine runs {self.model_config.dtype}; "
                    "send the policy's weights in the engine dtype (float32 on CPU)"
                )
            pending.append((payload[0], tensor))
        if not final:
            return 0
        weights, self._darts_pending_weights = pending, []
        self.model_runner.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
        self._repack_kept_weight_layers()
        return len(weights)

    def _repack_kept_weight_layers(self) -> None:
        """Re-run the CPU GEMM dispatch of layers that keep their weight (embedding, LM head).

        A tied LM head shares the embedding's tensor, so the reload updates its data through the embedding, but its
        packed GEMM handle still holds the old matrix: the logits would come from stale weights.
        """
        for module in self.model_runner.get_model().modules():
            weight = getattr(module, "weight", None)
            method = getattr(module, "quant_method", None)
            if hasattr(module, "cpu_linear") and isinstance(weight, torch.Tensor) and weight.numel() > 0 and method:
                method.process_weights_after_loading(module)
