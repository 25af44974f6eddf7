"""Measure PTL(r), the decode-step latency with r running sequences, and write it as a ``PerTokenLatency`` profile.

    python -m openrlhf_darts.bench.profile_latency --model tiny|smollm2|PATH --out FILE.json
        [--num-running 1,2,4,8,16,32,64,128] [--tokens 16,64] [--prompt-tokens 96] [--repeats 3] [--seed 0]
        [--tp 1] [--gpu-memory-utilization 0.15] [--ray-address ADDRESS]

**Path measured.** The same one as the rollout benchmark and training: one engine built by OpenRLHF's
``create_vllm_engines`` with ``DartsRolloutRayActor``, prefix caching on, driven through Ray, r concurrent calls of the
actor's ``generate`` (one request each, as upstream's executor sends them). Per-request Python overheads of the actor
and of vLLM's output processing are therefore part of the profile, as they are part of a real rollout.

**Method (difference of two lengths).** For each r, r requests with distinct random prompts of ``--prompt-tokens``
tokens decode exactly L tokens (``ignore_eos``), for L = L1 and L = L2 (``--tokens``); the prefix cache is reset before
each run, so both pay the same prefill and dispatch. With T(r, L) the median wall time over ``--repeats`` runs,

    PTL(r) = (T(r, L2) - T(r, L1)) / (L2 - L1)

cancels prefill, dispatch and the final gather. ``overhead_s`` in the profile's meta keeps T(r, L1) - L1 * PTL(r), the
fixed cost of launching r requests (not used by the cost model). Physical step time never falls as r grows, so the
stored points are the running maximum of the measured ones (the raw values are kept in meta as ``raw_points``).
Context-length effects are not modelled; pick ``--prompt-tokens`` and ``--tokens`` near your rollout's typical context.

**On a GPU cluster** (documented in docs/sim.md): install the GPU requirements, start Ray on the node (``ray start
--head`` or inside the Slurm launcher), and run, per model and TP degree you train with, e.g.

    python -m openrlhf_darts.bench.profile_latency --model /models/Qwen2.5-7B --tp 4 --gpu-memory-utilization 0.9 \\
        --num-running 1,8,32,64,128,256,512 --tokens 256,1280 --prompt-tokens 1024 --ray-address auto \\
        --out profiles/h100_qwen2.5-7b_tp4.json

then pass the file as ``--darts.latency_profile`` (training) or ``--latency`` (``python -m openrlhf_darts.sim``). On
GPU the engine keeps upstream's bf16; the CPU-only environment variables below are ignored there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from openrlhf_darts.core.cost_model import PerTokenLatency

DEFAULT_NUM_RUNNING = "1,2,4,8,16,32,64,128"


def _ints(flag: str, text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{flag}={text!r} is not a comma-separated list of integers, e.g. 1,2,4,8") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{flag}={text!r} must list positive integers")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m openrlhf_darts.bench.profile_latency", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", default="tiny", help="tiny, smollm2 or a local Hugging Face model folder")
    parser.add_argument("--out", required=True, help="profile JSON to write")
    parser.add_argument("--num-running", default=DEFAULT_NUM_RUNNING, help="concurrencies r to measure")
    parser.add_argument("--tokens", default="16,64", help="the two decode lengths L1,L2 (L1 < L2)")
    parser.add_argument("--prompt-tokens", type=int, default=96, help="tokens per (random) prompt")
    parser.add_argument("--repeats", type=int, default=3, help="runs per (r, L); the median is used")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tp", type=int, default=1, help="tensor parallel degree of the engine")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.15, help="ignored by the CPU backend")
    parser.add_argument("--ray-address", default=None, help="join this Ray cluster (GPU); default: start a local one")
    parser.add_argument(
        "--torch-proxy",
        default=None,
        help=f"GPU without vLLM: time a pure-PyTorch decode step of this shape instead ({', '.join(PROXY_SHAPES)})",
    )
    parser.add_argument("--context", type=int, default=2048, help="--torch-proxy: cached tokens per sequence")
    return parser


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _fixed_length(tokens: int):
    """Sampling parameters that decode exactly ``tokens`` tokens (no EOS, no stop tokens)."""
    from vllm import SamplingParams

    return SamplingParams(temperature=1.0, max_tokens=tokens, min_tokens=tokens, ignore_eos=True)


def _timed_run(engine, prompts: list[list[int]], sampling_params) -> float:
    """Wall seconds for these requests, all dispatched at once, from a cold prefix cache."""
    import ray

    ray.get(engine.reset_prefix_cache.remote())
    start = time.perf_counter()
    outputs = ray.get([engine.generate.remote(prompt, sampling_params) for prompt in prompts])
    elapsed = time.perf_counter() - start
    lengths = {len(output.outputs[0].token_ids) for output in outputs}
    if lengths != {sampling_params.max_tokens}:
        raise RuntimeError(f"requests decoded {sorted(lengths)} tokens; expected exactly {sampling_params.max_tokens}")
    return elapsed


def measure(
    engine,
    vocab_size: int,
    num_running: Sequence[int],
    tokens: tuple[int, int],
    prompt_tokens: int,
    repeats: int,
    seed: int,
    progress: bool = True,
) -> dict:
    """{"points": [[r, PTL]], "raw_points", "overhead_s", "wall_s"} from the difference method (module docstring).

    The two lengths alternate within each repeat, so a load change on a shared machine hits both alike.
    """
    from tqdm import tqdm

    rng = random.Random(seed)
    short, long_ = tokens
    raw, overhead, walls = [], [], {}
    runs = [(r, length) for r in num_running for length in (short, long_)]
    with tqdm(total=len(runs) * repeats, desc="profile", unit="run", disable=not progress, file=sys.stderr) as bar:
        for r in num_running:
            prompts = [[rng.randrange(10, vocab_size - 10) for _ in range(prompt_tokens)] for _ in range(r)]
            times: dict[int, list[float]] = {short: [], long_: []}
            for _ in range(repeats):
                for length in (short, long_):
                    times[length].append(_timed_run(engine, prompts, _fixed_length(length)))
                    bar.update(1)
            medians = {length: statistics.median(values) for length, values in times.items()}
            walls.update({f"{r}x{length}": values for length, values in times.items()})
            step = (medians[long_] - medians[short]) / (long_ - short)
            if step <= 0:
                raise RuntimeError(
                    f"r={r}: {long_} tokens took {medians[long_]:.3f}s, not longer than {short} tokens "
                    f"({medians[short]:.3f}s); the machine is too noisy for this profile, raise --repeats or --tokens"
                )
            raw.append([r, step])
            overhead.append([r, medians[short] - short * step])
    points, highest = [], 0.0
    for r, step in raw:
        highest = max(highest, step)
        points.append([r, highest])
    return {"points": points, "raw_points": raw, "overhead_s": overhead, "wall_s": walls}


# ---- GPU proxy without vLLM ----------------------------------------------------------------------------------------
# Decoder shapes (Qwen2.5 configs) for --torch-proxy: hidden, layers, attention heads, KV heads, head dim, MLP, vocab.
PROXY_SHAPES = {
    "qwen2.5-7b": (3584, 28, 28, 4, 128, 18944, 152064),
    "qwen2.5-14b": (5120, 48, 40, 8, 128, 13824, 152064),
    "qwen2.5-32b": (5120, 64, 40, 8, 128, 27648, 152064),
}


def measure_torch_proxy(
    shape: str, tp: int, context: int, num_running: Sequence[int], reps: int = 20, device: str = "cuda"
) -> list:
    """[[r, seconds]]: one decode step of one TP shard of a Qwen2.5-shaped decoder, in bf16 on CUDA, via a CUDA graph.

    For machines with a GPU but no vLLM build. Per layer: RMSNorm, fused QKV projection, a KV-cache write, decode
    attention over ``context`` cached tokens (batched matmuls over each KV head's query group: K and V are read once,
    as decode kernels do), output projection, RMSNorm, SwiGLU MLP; then the LM head and a greedy pick. Every width is
    divided by ``tp`` (one shard); tensor-parallel all-reduces, sampling, scheduling and rotary embeddings are left
    out, so this is a lower bound on the engine's step that keeps its memory-bound shape. Weights are random (time does
    not depend on their values). ``device="cpu"`` runs the same step eagerly (a smoke test of the shapes, not a
    profile).
    """
    import torch

    if shape not in PROXY_SHAPES:
        raise ValueError(f"--torch-proxy {shape!r} is not one of {sorted(PROXY_SHAPES)}")
    hidden, layers, heads, kv_heads, head_dim, inter, vocab = PROXY_SHAPES[shape]
    if heads % tp or kv_heads % tp or inter % tp:
        raise ValueError(f"--tp={tp} does not divide {shape}'s {heads} heads, {kv_heads} KV heads and MLP {inter}")
    heads, kv_heads, inter, vocab = heads // tp, kv_heads // tp, inter // tp, vocab // tp
    group = heads // kv_heads
    device, dtype = torch.device(device), torch.bfloat16
    r_max = max(num_running)

    def weight(*size):
        return torch.randn(*size, device=device, dtype=dtype) * 0.02

    params = [
        (weight(hidden, (heads + 2 * kv_heads) * head_dim), weight(heads * head_dim, hidden),
         weight(hidden, 2 * inter), weight(inter, hidden))
        for _ in range(layers)
    ]  # fmt: skip
    lm_head = weight(hidden, vocab)
    # Per layer K and V caches, [r_max * kv_heads, context, head_dim]; a prefix slice serves r sequences.
    caches = [
        (torch.randn(r_max * kv_heads, context, head_dim, device=device, dtype=dtype),
         torch.randn(r_max * kv_heads, context, head_dim, device=device, dtype=dtype))
        for _ in range(layers)
    ]  # fmt: skip

    def rms(x):
        return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype)

    def step(x):  # x: [r, hidden]
        r = x.shape[0]
        for (w_qkv, w_o, w_gu, w_down), (k_cache, v_cache) in zip(params, caches):
            qkv = rms(x) @ w_qkv
            q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
            k_all, v_all = k_cache[: r * kv_heads], v_cache[: r * kv_heads]
            k_all[:, -1].copy_(k.reshape(r * kv_heads, head_dim))
            v_all[:, -1].copy_(v.reshape(r * kv_heads, head_dim))
            q = q.reshape(r * kv_heads, group, head_dim)
            scores = torch.bmm(q, k_all.transpose(1, 2)) * head_dim**-0.5  # [r * kv_heads, group, context]
            attn = torch.bmm(scores.float().softmax(-1).to(dtype), v_all)  # [r * kv_heads, group, head_dim]
            x = x + attn.reshape(r, heads * head_dim) @ w_o
            gate, up = (rms(x) @ w_gu).chunk(2, dim=-1)
            x = x + (torch.nn.functional.silu(gate) * up) @ w_down
        return (rms(x) @ lm_head).argmax(-1)

    points = []
    for r in sorted(set(num_running)):
        x = torch.randn(r, hidden, device=device, dtype=dtype)
        if device.type != "cuda":
            begin = time.perf_counter()
            for _ in range(reps):
                step(x)
            points.append([r, (time.perf_counter() - begin) / reps])
            continue
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                step(x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step(x)
        for _ in range(5):
            graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        points.append([r, start.elapsed_time(end) / 1000 / reps])
        del graph
        print(f"{shape} tp={tp} context={context} r={r}: {points[-1][1] * 1000:.3f} ms", flush=True)
    return points


def proxy_main(args: argparse.Namespace, num_running: list[int]) -> PerTokenLatency:
    import torch

    if not torch.cuda.is_available():
        raise ValueError("--torch-proxy needs a CUDA GPU; on CPU profile the real engine (leave --torch-proxy out)")
    raw = measure_torch_proxy(args.torch_proxy, args.tp, args.context, num_running)
    points, highest = [], 0.0
    for r, seconds in raw:
        highest = max(highest, seconds)
        points.append((r, highest))
    profile = PerTokenLatency(
        points=tuple(points),
        meta={
            "model": f"{args.torch_proxy} (random weights)",
            "device": torch.cuda.get_device_name(0),
            "tp": args.tp,
            "context": args.context,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "method": "torch proxy of one decode step of one TP shard (bf16, CUDA graph, mean of 20 replays); "
            "no vLLM, no all-reduce, no sampling or scheduling: a lower bound with the engine's memory-bound shape",
            "points_are": "running maximum of raw_points (seconds per decode step)",
            "raw_points": raw,
            "torch": torch.__version__,
        },
    )
    profile.save(args.out)
    print(f"wrote {args.out}")
    return profile


def main(argv: Sequence[str] | None = None) -> PerTokenLatency:
    args = build_parser().parse_args(argv)
    num_running = sorted(set(_ints("--num-running", args.num_running)))
    tokens = _ints("--tokens", args.tokens)
    if len(tokens) != 2 or tokens[0] >= tokens[1]:
        raise ValueError(f"--tokens={args.tokens!r} must be two lengths L1,L2 with L1 < L2, e.g. 16,64")
    for flag, value in (("--prompt-tokens", args.prompt_tokens), ("--repeats", args.repeats), ("--tp", args.tp)):
        if value < 1:
            raise ValueError(f"{flag}={value} is not positive")
    if not Path(args.out).parent.is_dir():
        raise ValueError(f"--out {args.out}: folder {Path(args.out).parent} does not exist; create it first")
    if args.torch_proxy:
        return proxy_main(args, num_running)

    import ray

    from openrlhf_darts.backends.cpu import settings
    from openrlhf_darts.bench.rollout_engine import (
        CPU_BLOCK_SIZE,
        MIN_KV_CACHE_BYTES,
        create_engine,
        init_ray,
        kv_bytes_per_token,
    )
    from openrlhf_darts.models import resolve_model

    model_path = resolve_model(args.model)
    config = json.loads((Path(model_path) / "config.json").read_text())
    context = args.prompt_tokens + tokens[1]
    max_model_len = 64 * math.ceil(context / 64)
    blocks = max(num_running) * math.ceil(context / CPU_BLOCK_SIZE)
    env = {
        settings.KV_CACHE_BYTES_ENV: str(
            max(MIN_KV_CACHE_BYTES, int(1.2 * blocks * CPU_BLOCK_SIZE * kv_bytes_per_token(model_path)))
        ),
        settings.MAX_NUM_SEQS_ENV: str(max(128, max(num_running))),
    }
    if args.ray_address:
        from openrlhf_darts import compat

        ray.init(address=args.ray_address, runtime_env=compat.ray_runtime_env({"env_vars": env}))
    else:
        init_ray(env)
    load_start = os.getloadavg()[0]
    try:
        engine = create_engine(
            model_path, args.seed, max_model_len, tensor_parallel_size=args.tp,
            gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=not _cuda(),
        )  # fmt: skip
        ray.get(engine.generate.remote([11] * 8, _fixed_length(8)))
        result = measure(
            engine,
            config["vocab_size"],
            num_running,
            (tokens[0], tokens[1]),
            args.prompt_tokens,
            args.repeats,
            args.seed,
        )
    finally:
        ray.shutdown()
    device = "cpu"
    if _cuda():
        import torch

        device = torch.cuda.get_device_name(0)
    profile = PerTokenLatency(
        points=tuple((r, s) for r, s in result["points"]),
        meta={
            "model": args.model,
            "model_path": model_path,
            "device": device,
            "host": platform.machine(),
            "cpu_count": os.cpu_count(),
            "tp": args.tp,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "method": f"difference of median wall times at {tokens[0]} and {tokens[1]} decoded tokens "
            f"(ignore_eos), {args.repeats} repeats, {args.prompt_tokens}-token random prompts, prefix cache reset",
            "path": "create_vllm_engines + DartsRolloutRayActor, r concurrent actor.generate calls",
            "points_are": "running maximum of raw_points (seconds per decode step)",
            "raw_points": result["raw_points"],
            "overhead_s": result["overhead_s"],
            "wall_s": result["wall_s"],
            "engine_env": env,
            "load_average_1m": [load_start, os.getloadavg()[0]],
            "ray_worker_niceness": os.environ.get("RAY_worker_niceness", "15 (Ray's default)"),
        },
    )
    profile.save(args.out)
    print(f"{'r':>6}{'PTL ms':>10}{'raw ms':>10}{'overhead s':>12}")
    for (r, step), (_, raw), (_, over) in zip(result["points"], result["raw_points"], result["overhead_s"]):
        print(f"{r:>6}{step * 1000:>10.3f}{raw * 1000:>10.3f}{over:>12.3f}")
    print(f"wrote {args.out}")
    return profile


if __name__ == "__main__":
    main()
