"""Allocation of a batch whose pruned prompt's length spread falls: does the prompt come back from M_up?

    python -m openrlhf_darts.bench.spread_fall [--steps 20] [--fall-at 6] [--seed 0] [--label after]
        [--out benchmarks/spread_fall]

Runs the product's `GroupPlanner` (trainer/planner.py: length statistics -> budget -> allocation -> tail pruning) on a
synthetic batch, no engine: 8 prompts, n = 4, candidates in [4, 8], 40 per step (fixed budget), dual-end L = 1, the
paper's tail pruning, alpha 0.3, reference weights. Every step plans the batch, draws each prompt's candidate lengths
from its log-normal (median 200 tokens; candidate j of prompt i at step t always gets the same draw, so runs with
different plans share their random numbers), censors them the way the engine does (a shortest-only group stops at its
4th shortest finish and its other candidates are aborted one token later, with that partial length), and feeds the
outcomes to `GroupPlanner.observe`. Prompt p0 starts wide (log-sigma 1.0), so it is pruned to M_up = 8 and runs
shortest-only; from step ``--fall-at`` on its spread falls to log-sigma 0.3, the others' level (0.3-0.5).

It uses only APIs that predate issue 11, so the same file runs against the older code for the "before" picture:
``PYTHONPATH=<checkout of the older commit> python <this file> --label before``. It prints which code it imported.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import subprocess
from pathlib import Path

import openrlhf_darts
from openrlhf_darts.config import DartsConfig
from openrlhf_darts.core.types import CandidateResult, GroupOutcome, GroupPlan
from openrlhf_darts.trainer.planner import GroupPlanner, prompt_key

MEDIAN = 200.0
SIGMAS = [1.0, 0.5, 0.45, 0.4, 0.35, 0.3, 0.3, 0.3]  # p0 starts wide; its spread falls to 0.3 at --fall-at
FALLEN = 0.3


def engine_outcome(plan: GroupPlan, lengths: list[int]) -> GroupOutcome:
    """What the engine reports: a shortest-only group aborts every candidate longer than its release length + 1."""
    release = sorted(lengths)[plan.num_keep - 1] if plan.shortest_only else None
    results = []
    for j, length in enumerate(lengths):
        if release is not None and length > release + 1:
            results.append(CandidateResult(j, release + 1, False, True))
        else:
            results.append(CandidateResult(j, length, False, False))
    return GroupOutcome.from_results(plan, results)


def run(steps: int, fall_at: int, seed: int) -> dict:
    config = DartsConfig.from_flags(
        {"enable": True, "max_candidates": 8, "avg_candidates": 5.0, "ema_alpha": 0.3}, n_samples_per_prompt=4
    )
    planner = GroupPlanner(config)
    prompts = [f"p{i}" for i in range(len(SIGMAS))]
    rows = []
    for step in range(1, steps + 1):
        plans = planner.plan(prompts)
        sigmas = [FALLEN if i == 0 and step >= fall_at else s for i, s in enumerate(SIGMAS)]
        outcomes = []
        for i, (plan, sigma) in enumerate(zip(plans, sigmas)):
            rng = random.Random(f"{seed}-{step}-{i}")  # candidate j's z-score is the same whatever M'_i is
            lengths = [
                max(1, round(MEDIAN * math.exp(sigma * rng.gauss(0.0, 1.0)))) for _ in range(plan.num_candidates)
            ]
            outcomes.append(engine_outcome(plan, lengths))
        planner.observe(prompts, outcomes)
        rows.append(
            {
                "step": step,
                "p0_sigma": sigmas[0],
                "candidates": [p.num_candidates for p in plans],
                "num_long": [p.num_long for p in plans],
                "v_after": [round(planner.stats.std(prompt_key(p)), 2) for p in prompts],
            }
        )
    return {"rows": rows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--fall-at", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default="after", help="name of the saved files: <label>.json, <label>.txt")
    parser.add_argument("--out", default="benchmarks/spread_fall")
    args = parser.parse_args(argv)

    package = Path(openrlhf_darts.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(package), "log", "-1", "--format=%h %s"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    report = run(args.steps, args.fall_at, args.seed)
    report["meta"] = {
        "code": str(package),
        "commit": commit,
        "steps": args.steps,
        "fall_at": args.fall_at,
        "seed": args.seed,
        "sigmas": SIGMAS,
        "fallen_sigma": FALLEN,
        "median": MEDIAN,
    }

    lines = [
        f"code: {package} ({commit})",
        f"8 prompts, n=4, M' in [4, 8], budget 40, dual-end L=1, paper tail pruning; p0 log-sigma 1.0 -> {FALLEN} "
        f"from step {args.fall_at}",
        "step  p0 sigma  M'_i per prompt (* = shortest-only)        v_p0   v others (mean)",
    ]
    for row in report["rows"]:
        marks = " ".join(f"{m}{'*' if long == 0 else ' '}" for m, long in zip(row["candidates"], row["num_long"]))
        others = statistics.fmean(row["v_after"][1:])
        lines.append(f"{row['step']:4d}  {row['p0_sigma']:8.2f}  {marks}   {row['v_after'][0]:7.1f}  {others:7.1f}")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.label}.txt").write_text(text + "\n")
    (out / f"{args.label}.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"saved {out / (args.label + '.json')} and {out / (args.label + '.txt')}")
    if (out / "before.json").exists() and (out / "after.json").exists():
        _plot(out)
        print(f"saved {out / 'spread_fall.png'} (before vs after)")


def _plot(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
    for label, style in (("before", "--"), ("after", "-")):
        rows = json.loads((out / f"{label}.json").read_text())["rows"]
        steps = [row["step"] for row in rows]
        top.plot(steps, [row["candidates"][0] for row in rows], style, marker="o", label=label)
        bottom.plot(steps, [row["v_after"][0] for row in rows], style, marker="o", label=f"{label}: v_p0")
        bottom.plot(steps, [statistics.fmean(row["v_after"][1:]) for row in rows], style, color="grey", linewidth=0.8)
    fall_at = json.loads((out / "after.json").read_text())["meta"]["fall_at"]
    for axis in (top, bottom):
        axis.axvline(fall_at - 0.5, color="red", linewidth=0.8)
    top.set_ylabel("M'_p0 (8 = M_up, shortest-only)")
    bottom.set_ylabel("smoothed std v (tokens)")
    bottom.set_xlabel("step (red: p0's spread falls; grey: mean v of the other prompts)")
    top.legend()
    bottom.legend()
    fig.tight_layout()
    fig.savefig(out / "spread_fall.png", dpi=120)


if __name__ == "__main__":
    main()
