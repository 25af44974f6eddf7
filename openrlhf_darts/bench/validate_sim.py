"""Validate the simulator: the real engine's measured rollout time against the cost model's replay of its lengths.

    python -m openrlhf_darts.bench.validate_sim --model tiny|smollm2 [--profile FILE.json] [--repeats 3]
        [--fresh-profile] [--n 8] [--num-prompts 16] [--max-tokens 128] [--seed 0] [--out runs/validate_sim]
        [--report REPORT.json]

1. Runs the rollout benchmark (``bench.rollout``: baseline, DARTS shortest-only, DARTS dual-end on one real vLLM
   engine) ``--repeats`` times on one engine, recording every candidate's length and each variant's wall time of the
   generation phase (dispatch of all prompts until the last group returns). ``--report`` replays an earlier
   benchmark's ``report.json`` instead. Measured and simulated seconds are summed over the runs.
2. Replays each variant's recorded lengths (aborted candidates at their partial length) through
   ``core.cost_model.rollout_time`` with the shipped profile of the model
   (``openrlhf_darts/profiles/cpu_<model>.json``): one engine, all candidates starting together.
3. Prints measured vs simulated seconds and the relative error (simulated / measured - 1), the target being within
   15%, plus the same for each variant's time relative to the baseline, which is what speedup estimates rest on. A
   second column (``sim+fixed``) adds each variant's fixed cost, measured on the same engine right before the
   benchmark by running the variant with one-token requests (dispatch, tokenizer transfer, tokenization, prefill,
   reward, returns); the cost model itself has no such term. Replaying a ``--report`` uses the profile's launch
   overhead (``overhead_s`` in its meta) there instead.

Both tables must come from the same machine and similar load: CPU wall time moves with anything else running.
``--fresh-profile`` also profiles the same engine right before the benchmark (profile_latency's method, same load)
and prints a second comparison with that profile.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openrlhf_darts.core.cost_model import PerTokenLatency
from openrlhf_darts.sim.latency import PROFILES_DIR
from openrlhf_darts.sim.replay import recorded_rollout_time

TARGET = 0.15


def launch_overhead(profile: PerTokenLatency, requests: int) -> float:
    """The profile's fixed launch cost for ``requests`` concurrent requests, linear between its measured points."""
    points = profile.meta.get("overhead_s")
    if not points:
        return 0.0
    if requests <= points[0][0]:
        return max(0.0, points[0][1])
    for (r0, s0), (r1, s1) in zip(points, points[1:]):
        if requests <= r1:
            return max(0.0, s0 + (requests - r0) * (s1 - s0) / (r1 - r0))
    (r0, s0), (r1, s1) = points[-2:] if len(points) > 1 else (points[0], points[0])
    slope = (s1 - s0) / (r1 - r0) if r1 != r0 else 0.0
    return max(0.0, s1 + (requests - r1) * slope)


def compare(
    reports: Sequence[dict[str, Any]], profile: PerTokenLatency, fixed_s: dict[str, float] | None = None
) -> dict[str, Any]:
    """Measured vs simulated seconds per variant, summed over repeated runs, and the same relative to the baseline.

    Each run's recorded lengths are replayed on their own; summing runs before dividing damps the noise of one CPU
    measurement without averaging away a systematic error. ``fixed_s`` (seconds per run and variant, measured on the
    variant's real path with one-token requests) is added in the second column; without it the profile's launch
    overhead for that many requests is used.
    """
    rows = {}
    for name in reports[0]["variants"]:
        runs = [report["variants"][name] for report in reports]
        measured = [run["stats"]["wall_s"] for run in runs]
        simulated = [recorded_rollout_time([g["lengths"] for g in run["groups"]], profile) for run in runs]
        requests = sum(len(g["lengths"]) for g in runs[0]["groups"])
        fixed = fixed_s[name] if fixed_s is not None else launch_overhead(profile, requests)
        launch = fixed * len(runs)
        rows[name] = {
            "requests": requests,
            "runs": len(runs),
            "engine_iterations": [run["stats"]["engine_iterations"] for run in runs],
            "tokens_generated": sum(run["stats"]["tokens_generated"] for run in runs),
            "measured_s": sum(measured),
            "simulated_s": sum(simulated),
            "error": sum(simulated) / sum(measured) - 1.0,
            "per_run_errors": [s / m - 1.0 for s, m in zip(simulated, measured)],
            "fixed_s_per_run": fixed,
            "fixed_source": "measured one-token run of this path" if fixed_s is not None else "profile overhead_s",
            "simulated_with_launch_s": sum(simulated) + launch,
            "error_with_launch": (sum(simulated) + launch) / sum(measured) - 1.0,
        }
    if "baseline" in rows:
        base = rows["baseline"]
        for row in rows.values():
            row["measured_ratio"] = row["measured_s"] / base["measured_s"]
            row["simulated_ratio"] = row["simulated_s"] / base["simulated_s"]
            row["ratio_error"] = row["simulated_ratio"] / row["measured_ratio"] - 1.0
    return {
        "rows": rows,
        "max_abs_error": max(abs(r["error"]) for r in rows.values()),
        "max_abs_error_with_fixed": max(abs(r["error_with_launch"]) for r in rows.values()),
        "target": TARGET,
    }


def format_table(result: dict[str, Any]) -> str:
    header = (
        f"{'variant':<15}{'requests':>9}{'runs':>5}{'tokens':>8}{'measured s':>12}{'simulated s':>13}{'error':>8}"
        f"{'sim+fixed s':>14}{'error':>8}{'meas. ratio':>13}{'sim. ratio':>12}{'error':>8}"
    )
    lines = [header, "-" * len(header)]
    for name, r in result["rows"].items():
        lines.append(
            f"{name:<15}{r['requests']:>9}{r['runs']:>5}{r['tokens_generated']:>8}{r['measured_s']:>12.2f}"
            f"{r['simulated_s']:>13.2f}"
            f"{r['error']:>+8.1%}{r['simulated_with_launch_s']:>14.2f}{r['error_with_launch']:>+8.1%}"
            f"{r.get('measured_ratio', float('nan')):>13.3f}{r.get('simulated_ratio', float('nan')):>12.3f}"
            f"{r.get('ratio_error', float('nan')):>+8.1%}"
        )
    for label, key in (("the cost model", "max_abs_error"), ("cost model + fixed cost", "max_abs_error_with_fixed")):
        verdict = "within" if result[key] <= result["target"] else "OUTSIDE"
        lines.append(f"max |error| of {label}: {result[key]:.1%} ({verdict} the {result['target']:.0%} target)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m openrlhf_darts.bench.validate_sim", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", default="tiny", help="tiny, smollm2 or a local model folder (then pass --profile)")
    parser.add_argument("--profile", default=None, help="PerTokenLatency file (default: the shipped cpu_<model>.json)")
    parser.add_argument("--report", default=None, help="replay this bench report.json instead of running the engine")
    parser.add_argument(
        "--fresh-profile",
        action="store_true",
        help="also measure a profile on the same engine right before the benchmark and compare with it too",
    )
    parser.add_argument("--repeats", type=int, default=3, help="benchmark runs on the same engine, summed")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/validate_sim")
    return parser


def _measure_before(requests: int, seed: int, fresh_profile: bool, found: dict):
    """A ``before`` hook for ``rollout.run_from_args``, run on the engine right before the benchmark.

    Always measures each variant's fixed cost on its real path (``fixed_s``): the median wall time, over 3 runs, of
    the variant with ``max_tokens=1``, i.e. dispatch, tokenizer transfer, tokenization, prefill, one step, reward and
    the return of the results. With ``fresh_profile`` it also profiles PTL(r) with profile_latency's method.
    """

    def hook(engine, context) -> None:
        import statistics

        from openrlhf_darts.bench import rollout, rollout_engine

        one_token = rollout_engine.rollout_sampling_params(1)
        found["fixed_s"] = {}
        for name, plan in rollout.variant_plans(context["n"]).items():
            walls = [
                rollout_engine.run_variant(
                    engine, name, plan, context["prompts"], context["labels"], one_token, context["tokenizer"],
                    context["n"], context["max_length"], progress=False,
                )["wall_s"]
                for _ in range(3)
            ]  # fmt: skip
            found["fixed_s"][name] = statistics.median(walls)
        if fresh_profile:
            from openrlhf_darts.bench.profile_latency import measure

            config = json.loads((Path(context["meta"]["model_path"]) / "config.json").read_text())
            num_running = [2**k for k in range(0, max(1, math.ceil(math.log2(requests))) + 1)]
            result = measure(engine, config["vocab_size"], num_running, (16, 64), 96, 3, seed)
            found["profile"] = PerTokenLatency(
                points=tuple((r, s) for r, s in result["points"]),
                meta={"overhead_s": result["overhead_s"], "raw_points": result["raw_points"], "note": "same session"},
            )

    return hook


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    profile_path = args.profile or str(PROFILES_DIR / f"cpu_{args.model}.json")
    if not os.path.isfile(profile_path):
        raise ValueError(
            f"latency profile {profile_path} does not exist; pass --profile, or measure one with "
            f"python -m openrlhf_darts.bench.profile_latency --model {args.model} --out {profile_path}"
        )
    if args.report and args.fresh_profile:
        raise ValueError("--fresh-profile needs a live engine; leave out --report to use it")
    if args.repeats < 1:
        raise ValueError(f"--repeats={args.repeats} is not positive; pass at least 1")
    profile = PerTokenLatency.load(profile_path)
    found: dict[str, Any] = {}  # filled by the hook: "fixed_s" per variant, "profile" with --fresh-profile
    if args.report:
        reports = [json.loads(Path(args.report).read_text())]
    else:
        from openrlhf_darts.bench import rollout

        bench_args = rollout.build_parser().parse_args(
            [
                "--model", args.model, "--n", str(args.n), "--num-prompts", str(args.num_prompts),
                "--max-tokens", str(args.max_tokens), "--seed", str(args.seed),
                "--out", str(Path(args.out) / "rollout"), "--variants", *rollout.VARIANTS,
            ]  # fmt: skip
        )
        requests = math.ceil(1.5 * args.n) * args.num_prompts
        hook = _measure_before(requests, args.seed, args.fresh_profile, found)
        reports = rollout.run_from_args(bench_args, repeats=args.repeats, before=hook)
    result = compare(reports, profile, found.get("fixed_s"))
    result["profile"] = profile_path
    result["report_meta"] = [report.get("meta", {}) for report in reports]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = f"\nprofile: {profile_path}\n{format_table(result)}"
    if "profile" in found:
        result["fresh"] = compare(reports, found["profile"], found.get("fixed_s"))
        result["fresh"]["profile"] = found["profile"].to_dict()
        text += f"\n\nprofile measured on the same engine just before the benchmark:\n{format_table(result['fresh'])}"
    (out / "validate.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "table.txt").write_text(text.lstrip("\n") + "\n")
    print(f"{text}\nwrote {out / 'validate.json'}")
    return result


if __name__ == "__main__":
    main()
