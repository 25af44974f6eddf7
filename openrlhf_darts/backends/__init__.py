"""Model-actor backends (data-flow steps: scoring, and upstream's training on the policy / critic actors): `cpu/`
(Hugging Face models on CPU, the local mode and the tests; also the CPU engine set-up, `cpu/engine.py`) and
`gpu_chunked` (upstream's DeepSpeed actors plus the token-streaming chunk methods of `scoring/`). `engine_kwargs` is
the engine actor's one hook into the platform's engine set-up. Importing this package imports nothing heavy."""

from __future__ import annotations


def engine_kwargs(kwargs: dict) -> dict:
    """The engine actor's constructor kwargs for the platform vLLM runs on: on CPU, `cpu.engine.engine_kwargs`
    (float32, KV cache size, the weight-sync worker extension); on GPU, upstream's as they are."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return kwargs
    from openrlhf_darts.backends.cpu.engine import engine_kwargs as cpu_engine_kwargs

    return cpu_engine_kwargs(kwargs)
