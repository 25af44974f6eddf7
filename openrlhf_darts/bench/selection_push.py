"""What each arm's selection does to a GRPO step's length push, on one shared set of candidates (DARTS_SPEC.md §4 and
§7: every candidate run to completion and scored, nothing trained).

    python -m openrlhf_darts.bench.selection_push [--mix pattern1] [--model tiny-verbose|PATH] [--eval-size 128]
        [--candidates 16] [--n 8] [--out runs/selection_push]

The training-dynamics benchmark compares arms whose policies drift apart after the first step, so it cannot say
whether a difference in the update comes from the selection or from where each run's policy has got to. This one
holds the policy fixed: it samples `--candidates` answers per held-out prompt from the starting policy at
temperature 1 (`bench.dynamics`' own evaluation call: upstream's generator path, no redundancy, no selection; one
training step is run because the benchmark needs one, and only the step-0 evaluation is read), then applies each
arm's selection to the same candidates, prompt by prompt:

- baseline: the first n of them, in the order sampled (what upstream would train on);
- shortest-only: the n shortest valid of the first ceil(1.5n) (the engine's rule: truncated ones only to fill);
- dual-end: `core.dual_end.select_dual_end` over the first M' candidates, with the arm's L and `--darts.truncated`
  rule (the arms of `bench.dynamics.ARMS`, the adaptive one at its average M' = 1.25n, allocation off);

and computes `core.shaping.length_push` over each kept set with its rewards (the group_norm advantages upstream would
give it), plus the kept set's mean length, length spread and length-reward correlation. Per arm: the mean over
prompts with a 95% bootstrap interval over prompts, and the paired difference to the baseline on the same prompts.
A negative push asks for shorter answers; the arm whose kept set makes the push more negative than the baseline's
shapes harder, to first order (core/shaping.py says what this does and does not measure).

Writes `report.json`, `summary.txt` and `selection_push.png` under `--out`, and the sampling run under `--out/sample`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np

from openrlhf_darts.bench import dynamics
from openrlhf_darts.bench.dynamics_report import bootstrap_mean
from openrlhf_darts.config import flag_table
from openrlhf_darts.core.dual_end import select_dual_end
from openrlhf_darts.core.shaping import length_correctness_corr, length_push

COMPARED = ("baseline", "shortest_only", "darts_uniform_exclude", "darts_uniform_long_end", "darts_l3_long_end",
            "darts_wide_l3_long_end")  # fmt: skip
_DEFAULT_RULE = dict(row[:2] for row in flag_table())["--darts.truncated"]
# arm -> (candidates as a multiple of n, L, truncated rule), from `bench.dynamics.ARMS`; L = 0 is shortest-only. The
# baseline keeps the first n.
SELECTIONS = {
    name: (arm.candidates, arm.num_long, arm.truncated or _DEFAULT_RULE)
    for name, arm in ((name, dynamics.ARMS[name]) for name in COMPARED)
}


def kept_set(lengths: list[int], truncated: list[bool], n: int, arm: str) -> list[int]:
    """Indices of the candidates `arm` keeps out of one prompt's candidates, in the order sampled."""
    multiple, num_long, rule = SELECTIONS[arm]
    pool = math.ceil(multiple * n)
    if len(lengths) < pool:
        raise ValueError(f"{arm} selects from {pool} candidates per prompt; only {len(lengths)} were sampled")
    if arm == "baseline":
        return list(range(n))
    return select_dual_end(lengths[:pool], truncated[:pool], n, num_long, rule)


def prompt_figures(lengths: list[int], rewards: list[float], truncated: list[bool], n: int) -> dict[str, dict]:
    """Per arm, the push and the kept set's length figures for one prompt's candidates."""
    out = {}
    for arm in SELECTIONS:
        kept = kept_set(lengths, truncated, n, arm)
        kept_l, kept_r = [lengths[j] for j in kept], [rewards[j] for j in kept]
        out[arm] = {
            "push": length_push(kept_l, kept_r),
            "length_mean": statistics.fmean(kept_l),
            "length_std": statistics.stdev(kept_l),
            "corr": length_correctness_corr(kept_l, kept_r),
            "mixed": len(set(kept_r)) > 1,
            "accuracy": statistics.fmean(r == 1.0 for r in kept_r),
        }
    return out


def summarize(per_prompt: list[dict[str, dict]]) -> dict[str, dict]:
    """Mean over prompts with 95% bootstrap intervals; the push also as a paired difference to the baseline."""
    summary = {}
    base = np.array([p["baseline"]["push"] for p in per_prompt])
    for arm in SELECTIONS:
        push = np.array([p[arm]["push"] for p in per_prompt])
        corrs = [p[arm]["corr"] for p in per_prompt if p[arm]["mixed"] and p[arm]["corr"] is not None]
        summary[arm] = {
            "push": float(push.mean()),
            "push_ci": bootstrap_mean(push),
            "push_minus_baseline": float((push - base).mean()),
            "push_minus_baseline_ci": bootstrap_mean(push - base),
            "length_mean": float(np.mean([p[arm]["length_mean"] for p in per_prompt])),
            "length_std": float(np.mean([p[arm]["length_std"] for p in per_prompt])),
            "corr_mixed": float(np.mean(corrs)) if corrs else None,
            "mixed_share": float(np.mean([p[arm]["mixed"] for p in per_prompt])),
            "accuracy": float(np.mean([p[arm]["accuracy"] for p in per_prompt])),
        }
    return summary


def format_summary(summary: dict, meta: dict) -> str:
    lines = [
        f"Selection and the length push: {meta['prompts']} held-out prompts x {meta['candidates']} candidates from "
        f"the starting policy at T=1 ({meta['model_path']}), n = {meta['n']}; each arm's selection applied to the "
        "same candidates. Push = mean over the kept set of (length - mean length) x group_norm advantage, tokens; "
        "< 0 asks for shorter answers. Mean over prompts [95% bootstrap interval]:",
        "",
        f"{'arm':<24}{'push':>24}{'push - baseline':>26}{'kept length':>13}{'length sd':>11}{'corr(mixed)':>13}"
        f"{'mixed':>7}{'kept acc':>10}",
    ]
    for arm, s in summary.items():
        corr = "-" if s["corr_mixed"] is None else f"{s['corr_mixed']:+.3f}"
        lines.append(
            f"{arm:<24}{s['push']:>+9.2f} [{s['push_ci'][0]:+.2f}, {s['push_ci'][1]:+.2f}]"
            f"{s['push_minus_baseline']:>+11.2f} [{s['push_minus_baseline_ci'][0]:+.2f}, "
            f"{s['push_minus_baseline_ci'][1]:+.2f}]{s['length_mean']:>13.1f}{s['length_std']:>11.1f}{corr:>13}"
            f"{s['mixed_share']:>7.2f}{s['accuracy']:>10.3f}"
        )
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(summary)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    y = np.arange(len(arms))
    for ax, key, label in (
        (axes[0], "push", "length push of the kept set (tokens)"),
        (axes[1], "push_minus_baseline", "push minus the baseline's, same prompts"),
    ):
        means = [summary[a][key] for a in arms]
        low = [summary[a][key] - summary[a][f"{key}_ci"][0] for a in arms]
        high = [summary[a][f"{key}_ci"][1] - summary[a][key] for a in arms]
        ax.barh(y, means, xerr=[low, high], color=[f"C{i}" for i in range(len(arms))], capsize=3)
        ax.axvline(0, color="k", linewidth=0.8)
        ax.set(yticks=y, yticklabels=arms, xlabel=label)
    axes[2].barh(y, [summary[a]["length_std"] for a in arms], color=[f"C{i}" for i in range(len(arms))])
    axes[2].set(yticks=y, yticklabels=arms, xlabel="kept set's length sd (tokens)")
    for ax in axes:
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle("one set of candidates from the starting policy, each arm's selection: mean over prompts, 95% CI")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m openrlhf_darts.bench.selection_push", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--mix", choices=sorted(dynamics.MIXES), default="pattern1", help="built-in task's mix")
    parser.add_argument("--model", default="tiny-verbose", help="tiny-verbose (the SFT policy of --mix) or a folder")
    parser.add_argument("--eval-size", type=int, default=128, help="held-out prompts")
    parser.add_argument("--candidates", type=int, default=16, help="answers sampled per prompt (>= 2n)")
    parser.add_argument("--n", type=int, default=8, help="group size")
    parser.add_argument("--out", default="runs/selection_push", help="output folder")
    args = parser.parse_args(argv)
    need = max(math.ceil(m * args.n) for m, _, _ in SELECTIONS.values())
    if args.n < 4 or args.candidates < need:
        raise ValueError(
            f"--n {args.n} --candidates {args.candidates}: the arms need n >= 4 (L = 3 leaves a short end) and "
            f"{need} candidates per prompt at this n; raise --candidates"
        )
    out = Path(args.out).resolve()
    sample_dir = out / "sample"
    dynamics.main([
        "--arms", "baseline", "--seeds", "1", "--steps", "1", "--eval-every", "1", "--prompts-per-step", "8",
        "--n", str(args.n), "--eval-size", str(args.eval_size), "--eval-samples", str(args.candidates),
        "--mix", args.mix, "--model", args.model, "--out", str(sample_dir),
    ])  # fmt: skip
    record = json.loads((sample_dir / "runs" / "baseline" / "seed0" / "evals.jsonl").read_text().splitlines()[0])
    if record["step"] != 0 or record["group_outcomes"] != 0:
        raise RuntimeError(f"{sample_dir}: the first evaluation is not a plain step-0 evaluation: {record['step']}")
    rows = record["sampled"]
    by_prompt: dict[int, list[int]] = {}
    for j, prompt in enumerate(rows["prompt"]):
        by_prompt.setdefault(prompt, []).append(j)
    per_prompt = []
    for prompt, idx in sorted(by_prompt.items()):
        if len(idx) != args.candidates:
            raise RuntimeError(f"held-out prompt {prompt} has {len(idx)} samples, expected {args.candidates}")
        per_prompt.append(prompt_figures([rows["length"][j] for j in idx], [rows["reward"][j] for j in idx],
                                         [rows["truncated"][j] for j in idx], args.n))  # fmt: skip
    report_dyn = json.loads((sample_dir / "report.json").read_text())
    meta = {
        "command": "python -m openrlhf_darts.bench.selection_push "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "args": vars(args),
        "model_path": report_dyn["meta"]["model_path"],
        "prompts": len(per_prompt),
        "candidates": args.candidates,
        "n": args.n,
        "selections": {a: {"candidates_multiple": m, "num_long": L, "truncated": r} for a, (m, L, r) in
                       SELECTIONS.items()},  # fmt: skip
    }
    summary = summarize(per_prompt)
    text = format_summary(summary, meta)
    report = {"meta": meta, "summary": summary, "per_prompt": per_prompt}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "summary.txt").write_text(text + "\n")
    png = plot(summary, out / "selection_push.png")
    print(text)
    print(f"\nwrote {out / 'report.json'}, {out / 'summary.txt'}, {png}")
    return report


if __name__ == "__main__":
    main()
