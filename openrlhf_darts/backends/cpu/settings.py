"""Settings that exist only on a CPU machine, read from the environment and validated in one place.

| variable                            | default                   | valid        | what                          |
|-------------------------------------|---------------------------|--------------|-------------------------------|
| `OPENRLHF_DARTS_CPU_KV_CACHE_BYTES` | 268435456 (256 MiB)       | >= 1048576   | vLLM KV cache of each engine  |
| `OPENRLHF_DARTS_CPU_MAX_NUM_SEQS`   | unset: vLLM's own default | >= 1         | requests one engine runs      |
| `OPENRLHF_DARTS_CPU_THREADS`        | 1                         | >= 1         | torch threads per model actor |

Why environment variables and not flags: they size CPU-only resources of processes that never see upstream's args
(engine actors are built by upstream's `create_vllm_engines`, OPENRLHF_SEAMS.md §9 item 9), on GPU they mean nothing,
and the benchmarks, which start engines without upstream's CLI, hand them to every actor through the Ray runtime
environment. A bad value raises `ValueError` naming the variable and its valid range where the setting is read,
before the engine or model is built. Standard library only.
"""

from __future__ import annotations

import os

KV_CACHE_BYTES_ENV = "OPENRLHF_DARTS_CPU_KV_CACHE_BYTES"
MAX_NUM_SEQS_ENV = "OPENRLHF_DARTS_CPU_MAX_NUM_SEQS"
THREADS_ENV = "OPENRLHF_DARTS_CPU_THREADS"
DEFAULT_KV_CACHE_BYTES = 256 * 2**20
MIN_KV_CACHE_BYTES = 2**20  # below one MiB no useful number of KV blocks fits even the tiny test model


def read_int(name: str, default: int | None, minimum: int) -> int | None:
    """The integer in environment variable `name`, or `default` when it is unset or empty; `ValueError` otherwise."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    shown = "unset it" if default is None else f"unset it for the default {default}"
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer; set an integer >= {minimum}, or {shown}") from None
    if value < minimum:
        raise ValueError(f"{name}={value} is out of range; set an integer >= {minimum}, or {shown}")
    return value


def engine_kwargs() -> dict[str, int]:
    """Extra vLLM engine arguments of a CPU engine actor: the KV cache size, and `max_num_seqs` when set."""
    kwargs = {"kv_cache_memory_bytes": read_int(KV_CACHE_BYTES_ENV, DEFAULT_KV_CACHE_BYTES, MIN_KV_CACHE_BYTES)}
    max_num_seqs = read_int(MAX_NUM_SEQS_ENV, None, 1)
    if max_num_seqs is not None:
        kwargs["max_num_seqs"] = max_num_seqs
    return kwargs


def model_actor_threads() -> int:
    """Torch threads of one CPU model actor."""
    return read_int(THREADS_ENV, 1, 1)
