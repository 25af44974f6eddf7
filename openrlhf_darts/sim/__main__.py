"""CLI: estimated rollout time of the baseline, the DARTS variants and tail batching at cluster scale.

    python -m openrlhf_darts.sim [--trace 7b-like|14b-like|32b-like|REPORT.json ...] [--latency matched|NAME|FILE ...]
                                 [--engines 64] [--prompts 512] [--n 8] [--repeats 3] [--seed 0]
                                 [--prompt-spread X] [--truncated exclude|long_end]
                                 [--tail-launch-ratio 1.25] [--tail-max-deferrals K]
                                 [--tail-steps 20] [--out runs/sim]

The tail-batching arms (``sim/tail_batching.py``) run ``--tail-steps`` steps in sequence after a warm-up, with the
deferred queue (``tail_batching``) or dropping the aborted prompts (``tail_batching_drop``); their fresh prompts come
from the same trace, the first ``--prompts`` of them being the other variants' prompts.

Prints one table per (trace, latency table), and writes ``sim.json``, ``table.txt`` and ``speedups.png`` under
``--out``. ``--latency matched`` (the default) pairs each synthetic family with the H200 decode-step proxy of its model
size and a recorded trace with the CPU profile of its model. The synthetic families and the ``gpu-like-synthetic``
table are assumptions, not measurements (``sim/traces.py``, ``sim/latency.py``); a recorded trace is a rollout
benchmark's ``report.json``.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from openrlhf_darts.core.types import TRUNCATED_RULES
from openrlhf_darts.core.tail_batching import launch_count
from openrlhf_darts.sim import latency as latency_tables
from openrlhf_darts.sim.replay import VARIANTS, simulate
from openrlhf_darts.sim.tail_batching import DEFAULT_WARMUP, simulate_tail_batching
from openrlhf_darts.sim.traces import FAMILIES, resolve_trace

DEFAULT_LATENCY = ("matched",)
TAIL_VARIANTS = {"tail_batching": "defer", "tail_batching_drop": "drop"}  # arm -> --tail_batching.aborted_prompts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m openrlhf_darts.sim", description=__doc__.split("\n")[0])
    parser.add_argument("--trace", action="append", help=f"family {sorted(FAMILIES)} or report.json (repeatable)")
    parser.add_argument(
        "--latency",
        action="append",
        help="table name, profile file, or 'matched' (default): each family's H200 proxy, a recording's CPU profile",
    )
    parser.add_argument("--engines", type=int, default=64, help="vLLM engines")
    parser.add_argument("--prompts", type=int, default=512, help="prompts per step (rollout batch size)")
    parser.add_argument("--n", type=int, default=8, help="samples kept per prompt")
    parser.add_argument("--repeats", type=int, default=3, help="independent steps averaged per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--variants", nargs="+", default=[*VARIANTS, *TAIL_VARIANTS], choices=[*VARIANTS, *TAIL_VARIANTS]
    )
    parser.add_argument("--tail-launch-ratio", type=float, default=1.25, help="tail batching: r (prompts = ceil(rN))")
    parser.add_argument(
        "--tail-max-deferrals", type=int, default=None, help="tail batching: pin a prompt after K deferrals (no cap)"
    )
    parser.add_argument("--tail-steps", type=int, default=20, help="tail batching: steps averaged after the warm-up")
    parser.add_argument(
        "--prompt-spread",
        type=float,
        default=None,
        help="override the families' log-std of prompt medians (sensitivity; recorded traces ignore it)",
    )
    parser.add_argument(
        "--truncated",
        default="exclude",
        choices=TRUNCATED_RULES,
        help="--darts.truncated: how selection treats candidates the length cap stopped (default exclude)",
    )
    parser.add_argument("--out", default="runs/sim", help="output folder")
    return parser


def format_table(entry: dict[str, Any]) -> str:
    header = (
        f"{'variant':<19}{'rollout s':>11}{'speedup':>9}{'decode steps':>14}{'cand/prompt':>13}{'early-stop':>11}"
        f"{'tokens gen':>13}{'wasted':>8}{'kept mean len':>15}"
    )
    lines = [f"trace: {entry['trace_description']}", f"latency: {entry['latency_description']}", header]
    lines.append("-" * len(header))
    for name, r in entry["variants"].items():
        lines.append(
            f"{name:<19}{r['rollout_time_s']:>11.2f}{r['speedup']:>9.3f}{r['decode_steps']:>14.0f}"
            f"{r['candidates_mean']:>13.2f}{r['early_stop_ratio']:>11.2f}{r['tokens_generated']:>13.0f}"
            f"{r['wasted_share']:>8.1%}{r['kept_length_mean']:>15.0f}"
        )
    return "\n".join(lines)


def plot_speedups(entries: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for v in entries[0]["variants"] if v != "baseline"]
    labels = [f"{e['trace']}\n{e['latency']}" for e in entries]
    width = 0.8 / max(1, len(variants))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(entries)), 4))
    for k, variant in enumerate(variants):
        xs = [i + (k - (len(variants) - 1) / 2) * width for i in range(len(entries))]
        ax.bar(xs, [e["variants"][variant]["speedup"] for e in entries], width, label=variant)
    ax.axhline(1.0, color="k", linewidth=0.8)
    ax.set_xticks(range(len(entries)), labels, fontsize=7)
    ax.set_ylabel("simulated rollout speedup vs baseline")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    for flag, value in (("--engines", args.engines), ("--prompts", args.prompts), ("--repeats", args.repeats)):
        if value < 1:
            raise ValueError(f"{flag}={value} is not positive; pass at least 1")
    tails = [v for v in args.variants if v in TAIL_VARIANTS]
    classic = [v for v in args.variants if v in VARIANTS]
    if tails and "baseline" not in classic:
        classic.insert(0, "baseline")  # the tail arms' speedups are over the baseline
    # The tail arms draw fresh prompts for every step after the first --prompts (warm-up and measured steps).
    tail_steps = (DEFAULT_WARMUP if args.tail_max_deferrals is None else args.tail_max_deferrals + 1) + args.tail_steps
    stream_size = args.prompts + launch_count(args.tail_launch_ratio, args.prompts) * tail_steps if tails else 0
    traces = args.trace or list(FAMILIES)
    entries = []
    for trace in traces:
        # Prompts are drawn in order from one seeded stream, so the first --prompts are the same with or without it.
        stream, description = resolve_trace(
            trace, max(args.prompts, stream_size), random.Random(args.seed), args.prompt_spread
        )
        prompts = stream[: args.prompts]
        model = json.loads(Path(trace).read_text())["meta"].get("model") if trace.endswith(".json") else None
        wanted = args.latency or DEFAULT_LATENCY
        names = [latency_tables.matched_name(trace, model) if name == "matched" else name for name in wanted]
        for name in names:
            table = latency_tables.resolve_latency(name)
            variants = simulate(
                prompts, args.n, args.engines, table, classic, args.repeats, args.seed, args.truncated
            )
            for arm in tails:
                tail = simulate_tail_batching(
                    stream, args.n, args.prompts, args.engines, table, args.tail_launch_ratio, TAIL_VARIANTS[arm],
                    args.tail_max_deferrals if TAIL_VARIANTS[arm] == "defer" else None, args.tail_steps,
                    seed=args.seed,
                )  # fmt: skip
                tail["speedup"] = variants["baseline"]["rollout_time_s"] / tail["rollout_time_s"]
                variants[arm] = tail
            entries.append(
                {
                    "trace": Path(trace).parent.name if trace.endswith(".json") else trace,
                    "trace_description": description,
                    "latency": name if not name.endswith(".json") else Path(name).stem,
                    "latency_description": latency_tables.describe(table),
                    "latency_table": table.to_dict(),
                    "variants": variants,
                }
            )
            print(format_table(entries[-1]) + "\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "meta": {
            "engines": args.engines,
            "prompts": args.prompts,
            "n": args.n,
            "repeats": args.repeats,
            "seed": args.seed,
            "prompt_spread_override": args.prompt_spread,
            "truncated": args.truncated,
            "tail_batching": {
                "launch_ratio": args.tail_launch_ratio,
                "max_deferrals": args.tail_max_deferrals,
                "steps": args.tail_steps,
                "columns": "cand/prompt = candidates generated per trained prompt; early-stop = share of launched "
                "prompts aborted",
            },
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "note": "cost-model estimates (openrlhf_darts.sim); synthetic families and tables are assumptions",
        },
        "results": entries,
    }
    (out / "sim.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "table.txt").write_text("\n\n".join(format_table(e) for e in entries) + "\n")
    plot_speedups(entries, out / "speedups.png")
    print(f"wrote {out / 'sim.json'}, {out / 'table.txt'}, {out / 'speedups.png'}")
    return report


if __name__ == "__main__":
    main()
