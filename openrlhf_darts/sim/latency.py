"""Per-token-latency tables the simulator can use, by name or by file.

- ``cpu-tiny``, ``cpu-smollm2``: profiles measured by ``python -m openrlhf_darts.bench.profile_latency`` on the vLLM
  CPU engine of our 2-core machines, shipped in ``openrlhf_darts/profiles/``. CPU decode is compute-bound, so a step
  costs about r times a one-sequence step: the least favourable shape for redundant candidates.
- ``h200-proxy-7b-tp1-ctx2048``, ``h200-proxy-7b-tp1-ctx8192``, ``h200-proxy-14b-tp2-ctx4096``,
  ``h200-proxy-32b-tp4-ctx4096``: measured on one H200 with ``profile_latency --torch-proxy`` (a pure-PyTorch bf16
  decode step of one tensor-parallel shard of a Qwen2.5-shaped decoder, CUDA graph, random weights, ``context`` cached
  tokens per sequence; no vLLM, no all-reduce, no sampling or scheduling, so a lower bound with the engine's
  memory-bound shape). ``matched`` picks the one that fits a synthetic family (7b-like: 7B TP1 at 2k context; 14b-like:
  14B TP2 at 4k; 32b-like: 32B TP4 at 4k).
- ``gpu-like-synthetic``: **synthetic, not measured**. A memory-bound GPU decode step costs a fixed weight read plus a
  per-sequence KV read: t(r) = 12 ms + 0.12 ms * r, i.e. a 16x larger batch (r = 1 -> 16) costs only 1.15x per step,
  and the step time doubles at r = 100. The numbers are an order-of-magnitude guess for a 7B-class model at TP 4 with
  contexts of a few thousand tokens (weights about 4 GB per GPU read at about 4 TB/s, plus launch and all-reduce
  overhead; KV about 57 KB per token). Measure a real profile on your cluster (docs/sim.md) before trusting absolute
  seconds; speedup ratios depend only on the table's shape.
- any other value: a ``PerTokenLatency`` JSON file.
"""

from __future__ import annotations

import os
from pathlib import Path

from openrlhf_darts.core.cost_model import PerTokenLatency

PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"
SHIPPED = {
    "cpu-tiny": "cpu_tiny.json",
    "cpu-smollm2": "cpu_smollm2.json",
    "h200-proxy-7b-tp1-ctx2048": "h200_proxy_qwen2.5-7b_tp1_ctx2048.json",
    "h200-proxy-7b-tp1-ctx8192": "h200_proxy_qwen2.5-7b_tp1_ctx8192.json",
    "h200-proxy-14b-tp2-ctx4096": "h200_proxy_qwen2.5-14b_tp2_ctx4096.json",
    "h200-proxy-32b-tp4-ctx4096": "h200_proxy_qwen2.5-32b_tp4_ctx4096.json",
}
MATCHED = {
    "7b-like": "h200-proxy-7b-tp1-ctx2048",
    "14b-like": "h200-proxy-14b-tp2-ctx4096",
    "32b-like": "h200-proxy-32b-tp4-ctx4096",
}


def gpu_like_synthetic() -> PerTokenLatency:
    """t(r) = 0.012 + 0.00012 r seconds, tabulated at powers of two up to 1024 (module docstring: synthetic)."""
    points = tuple((r, 0.012 + 0.00012 * r) for r in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
    return PerTokenLatency(
        points=points,
        meta={
            "name": "gpu-like-synthetic",
            "synthetic": True,
            "formula": "t(r) = 0.012 s + 0.00012 s * r",
            "note": "not measured; memory-bound GPU shape, see openrlhf_darts/sim/latency.py",
        },
    )


def matched_name(trace: str, model: str | None = None) -> str:
    """The table ``matched`` means for a trace: a family's proxy, or the CPU profile of a recorded trace's model."""
    if trace in MATCHED:
        return MATCHED[trace]
    if model is not None and f"cpu-{model}" in SHIPPED:
        return f"cpu-{model}"
    raise ValueError(
        f"--latency matched has no table for trace {trace!r} (model {model!r}); name a table or a profile file"
    )


def resolve_latency(name_or_path: str) -> PerTokenLatency:
    """A table by name (``SHIPPED`` keys, ``gpu-like-synthetic``) or from a profile file."""
    if name_or_path == "gpu-like-synthetic":
        return gpu_like_synthetic()
    if name_or_path in SHIPPED:
        return PerTokenLatency.load(PROFILES_DIR / SHIPPED[name_or_path])
    if os.path.isfile(name_or_path):
        return PerTokenLatency.load(name_or_path)
    raise ValueError(
        f"--latency {name_or_path!r} is neither one of {sorted([*SHIPPED, 'gpu-like-synthetic'])} nor a file; "
        "pass a name or a profile written by python -m openrlhf_darts.bench.profile_latency"
    )


def describe(latency: PerTokenLatency) -> str:
    """One line: where the table comes from and its values at a few concurrencies."""
    meta = latency.meta
    source = meta.get("name") or f"{meta.get('model', '?')} on {meta.get('device', '?')}, tp {meta.get('tp', 1)}"
    if "context" in meta:
        source += f", context {meta['context']}"
    samples = ", ".join(f"r={r}: {latency(r) * 1000:.2f} ms" for r in (1, 8, 64, 256))
    return f"{source} ({samples})"
