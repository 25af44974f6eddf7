"""Figures, spreads, the printed summary and the plots of the training-dynamics benchmark (`bench.dynamics`).

- `step_row`: the per-step figures of one run, read from its status dict (the `local/*` keys of local/trainer.py,
  upstream's `timing/generation` and `rollout/reward_mean`); nothing is recomputed.
- `eval_summary`: one held-out evaluation record (local/trainer.py) as figures per pattern, with 95% intervals:
  greedy accuracy by Wilson's interval (one answer per prompt), sampled accuracy and mean length by a bootstrap over
  prompts (samples of one prompt are not independent), and the within-prompt correlation of length and correctness.
- `summarize`: per arm and seed, cumulative rollout figures and the final evaluation; then each arm against the
  baseline *of the same seed* (same prompt order and engine seed) as ratios or differences, with their mean, min, max
  and a t-interval over seeds. A difference "rises above the seed spread" when that interval excludes no change.
- `format_summary`, `plot_*`, `write_outputs`: the printed table and the PNGs.

The reward is the exact-answer reward (1.0 = right), so accuracy is the mean reward.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from openrlhf_darts.core.percentile import nearest_rank

# Per-step figure -> status-dict key (docs/metrics.md, "Local runs").
STEP_FIGURES = {
    "kept_length_mean": "local/kept_length_mean",
    "kept_length_p50": "local/kept_length_p50",
    "kept_length_p90": "local/kept_length_p90",
    "kept_length_max": "local/kept_length_max",
    "finished_length_mean": "local/finished_length_mean",
    "finished_length_p50": "local/finished_length_p50",
    "finished_length_p90": "local/finished_length_p90",
    "finished_length_max": "local/finished_length_max",
    "engine_iterations": "local/engine_iterations",
    "finished_requests": "local/engine_finished_requests",
    "candidates": "local/candidates",
    "aborted": "local/aborted_candidates",
    "tokens_generated": "local/candidate_tokens",
    "tokens_kept": "local/kept_tokens",
    "rollout_s": "timing/generation",
    "step_s": "timing/step_total",
    "reward": "rollout/reward_mean",
}
# Figures of runs written since the length push was recorded (local/trainer.py); absent from older runs' records, and
# a step's `length_push_mixed` / `length_reward_corr` are absent when no group of that step had mixed rewards.
OPTIONAL_STEP_FIGURES = {
    "length_push": "local/kept_length_push",
    "length_push_mixed": "local/kept_length_push_mixed",
    "length_reward_corr": "local/kept_length_reward_corr",
    "mixed_groups": "local/kept_mixed_groups",
}
CUMULATIVE = ("engine_iterations", "tokens_generated", "tokens_kept", "rollout_s")
CONFIDENCE = 0.95


def step_row(record: dict) -> dict:
    """The figures of one step from its status dict; `tokens_wasted` = generated - kept (candidates not kept)."""
    missing = [key for key in STEP_FIGURES.values() if key not in record]
    if missing:
        raise KeyError(f"step {record.get('step')} status dict lacks {missing}; was it written by local/trainer.py?")
    row = {"step": int(record["step"]), **{name: float(record[key]) for name, key in STEP_FIGURES.items()}}
    row.update({name: float(record[key]) for name, key in OPTIONAL_STEP_FIGURES.items() if key in record})
    row["tokens_wasted"] = row["tokens_generated"] - row["tokens_kept"]
    return row


# ---- one held-out evaluation -------------------------------------------------------------------------------------
def wilson(successes: int, trials: int) -> list[float]:
    from scipy.stats import binomtest

    interval = binomtest(successes, trials).proportion_ci(CONFIDENCE, method="wilson")
    return [float(interval.low), float(interval.high)]


def bootstrap_mean(per_prompt: np.ndarray) -> list[float]:
    """95% percentile-bootstrap interval of the mean of per-prompt values (fixed seed: reruns print the same)."""
    from scipy.stats import bootstrap

    if len(per_prompt) < 2 or np.all(per_prompt == per_prompt[0]):
        return [float(per_prompt.mean())] * 2
    result = bootstrap((per_prompt,), np.mean, confidence_level=CONFIDENCE, n_resamples=2000, method="percentile",
                       random_state=0)  # fmt: skip
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def _p90(values: np.ndarray) -> float:
    """Nearest-rank 90th percentile, as the step figures use (`core.percentile`)."""
    return nearest_rank(np.asarray(values).tolist(), 90)


def _pass_figures(rows: dict, mask: np.ndarray) -> dict:
    prompts = np.asarray(rows["prompt"])[mask]
    lengths = np.asarray(rows["length"], dtype=float)[mask]
    correct = np.asarray(rows["reward"], dtype=float)[mask] == 1.0
    truncated = np.asarray(rows["truncated"], dtype=bool)[mask]
    ids, inverse = np.unique(prompts, return_inverse=True)
    per_prompt_acc = np.bincount(inverse, weights=correct) / np.bincount(inverse)
    per_prompt_len = np.bincount(inverse, weights=lengths) / np.bincount(inverse)
    figures = {
        "prompts": int(len(ids)),
        "samples": int(len(lengths)),
        "accuracy": float(correct.mean()),
        "length_mean": float(lengths.mean()),
        "length_mean_ci": bootstrap_mean(per_prompt_len),
        "length_p90": _p90(lengths),
        "truncated_rate": float(truncated.mean()),
    }
    if len(lengths) == len(ids):  # one answer per prompt (greedy): answers are independent
        figures["accuracy_ci"] = wilson(int(correct.sum()), len(lengths))
        return figures
    figures["accuracy_ci"] = bootstrap_mean(per_prompt_acc)
    # Within-prompt: length and correctness centred on their prompt's means, so prompts that are both easy and
    # short do not count as "shorter is better". > 0: longer answers of a prompt are more often right.
    dl = lengths - per_prompt_len[inverse]
    dc = correct - per_prompt_acc[inverse]
    figures["within_prompt_corr"] = (
        float((dl @ dc) / math.sqrt((dl @ dl) * (dc @ dc))) if dl @ dl and dc @ dc else None
    )
    mixed = [(i, p) for i, p in enumerate(per_prompt_acc) if 0.0 < p < 1.0]
    figures["mixed_groups"] = len(mixed) / len(ids)
    # DARTS_SPEC.md §1: a prompt shows Pattern II when its right answers are longer on average than its wrong ones.
    longer = [lengths[(inverse == i) & correct].mean() > lengths[(inverse == i) & ~correct].mean() for i, _ in mixed]
    figures["right_longer_share"] = float(np.mean(longer)) if longer else None
    return figures


def eval_summary(record: dict) -> dict:
    """Figures per pattern (and "all") of one evaluation record, greedy and sampled."""
    summary = {"step": record["step"], "seconds": record["seconds"], "group_outcomes": record["group_outcomes"]}
    for mode in ("greedy", "sampled"):
        rows = record[mode]
        patterns = np.asarray(rows["pattern"])
        by_pattern = {"all": _pass_figures(rows, np.ones(len(patterns), dtype=bool))}
        for pattern in sorted(set(rows["pattern"])):
            by_pattern[pattern] = _pass_figures(rows, patterns == pattern)
        summary[mode] = {
            "temperature": rows["temperature"],
            "n": rows["n"],
            "engine_iterations": rows["iterations"],
            "engine_finished_requests": rows["finished_requests"],
            "patterns": by_pattern,
        }
    return summary


# ---- across seeds ------------------------------------------------------------------------------------------------
def spread(values: list[float], null: float | None = None) -> dict:
    """mean, min, max, sd and a t-interval over seeds; `above_spread` (with a `null`): the interval excludes it."""
    from scipy.stats import t

    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": None, "values": []}
    mean = float(np.mean(values))
    out = {"mean": mean, "min": float(min(values)), "max": float(max(values)), "values": values}
    if len(values) >= 2:
        sd = float(np.std(values, ddof=1))
        half = float(t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1) * sd / math.sqrt(len(values)))
        out.update(sd=sd, ci=[mean - half, mean + half])
        if null is not None:
            out["above_spread"] = bool(not (mean - half <= null <= mean + half))
    return out


def _run_figures(run: dict) -> dict:
    """Cumulative and last-10-step figures of one run, and its final evaluation as `final/<pattern>/<figure>`."""
    steps, evals = run["steps"], run["evals"]
    final = evals[-1] if evals else None
    last = steps[-min(10, len(steps)) :]
    figures = {f"cumulative_{k}": sum(s[k] for s in steps) for k in CUMULATIVE}
    figures["kept_length_last10"] = float(np.mean([s["kept_length_mean"] for s in last]))
    figures["finished_length_last10"] = float(np.mean([s["finished_length_mean"] for s in last]))
    if all("length_push" in s for s in steps):  # a difference in tokens against the baseline (summarize)
        figures["length_push_mean"] = float(np.mean([s["length_push"] for s in steps]))
        figures["mixed_groups_mean"] = float(np.mean([s["mixed_groups"] for s in steps]))
    if final is not None:
        for pattern, sampled in final["sampled"]["patterns"].items():
            greedy = final["greedy"]["patterns"][pattern]
            figures[f"final/{pattern}/sampled_accuracy"] = sampled["accuracy"]
            figures[f"final/{pattern}/greedy_accuracy"] = greedy["accuracy"]
            figures[f"final/{pattern}/sampled_length"] = sampled["length_mean"]
            figures[f"final/{pattern}/greedy_length"] = greedy["length_mean"]
    return figures


def summarize(report: dict) -> dict:
    """Per arm and seed figures, then ratios (lengths, costs) and differences (accuracy) to the same seed's
    baseline."""
    arms = report["arms"]
    per_run = {a: {s: _run_figures(r) for s, r in arms[a]["runs"].items()} for a in arms}
    summary = {"runs": per_run, "vs_baseline": {}}
    if "baseline" not in arms:
        return summary
    for arm in arms:
        seeds = [s for s in per_run[arm] if s in per_run["baseline"]]
        compared = {}
        for key in per_run[arm][seeds[0]] if seeds else []:
            pairs = [(per_run[arm][s].get(key), per_run["baseline"][s].get(key)) for s in seeds]
            if any(a is None or b is None for a, b in pairs):
                continue
            if "accuracy" in key:  # difference in points
                compared[key] = spread([100.0 * (a - b) for a, b in pairs], 0.0)
            elif key.startswith("length_push"):  # a signed length in tokens: difference, not ratio
                compared[key] = spread([a - b for a, b in pairs], 0.0)
            else:
                compared[key] = spread([a / b if b else float("nan") for a, b in pairs], 1.0)
        summary["vs_baseline"][arm] = compared
    return summary


# ---- printed summary ---------------------------------------------------------------------------------------------
def _fmt_spread(s: dict, digits: int = 3) -> str:
    if s.get("mean") is None:
        return "-"
    text = f"{s['mean']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"
    return text + (" *" if s.get("above_spread") else "  ")


def format_summary(report: dict) -> str:
    meta, args, summary = report["meta"], report["meta"]["args"], report["summary"]
    arms = list(report["arms"])
    seeds = len(next(iter(report["arms"].values()))["runs"])
    lines = [
        f"Training dynamics: {len(arms)} arm(s) x {seeds} seed(s) x {args['steps']} steps; {args['prompts_per_step']} "
        f"prompts x n={args['n']} per step; lr {args['lr']}; held-out {meta['held_out_problems']} problems every "
        f"{args['eval_every']} steps (greedy, and {args['eval_samples']} samples at T=1); {meta['problems']}",
        f"wall time {meta['wall_s'] / 60:.1f} min, load average {meta['load_average_1m_at_start']:.1f} -> "
        f"{meta['load_average_1m_at_end']:.1f}",
        "",
        "Final held-out evaluation, mean over seeds [min, max]:",
        f"{'arm':<26}{'pattern':<9}{'greedy acc':>24}{'sampled acc':>24}{'sampled length':>24}{'greedy length':>24}",
    ]
    for arm in arms:
        runs = summary["runs"][arm]
        patterns = sorted({k.split("/")[1] for r in runs.values() for k in r if k.startswith("final/")})
        for pattern in patterns:
            cells = []
            for key, digits in (("greedy_accuracy", 3), ("sampled_accuracy", 3), ("sampled_length", 1),
                                ("greedy_length", 1)):  # fmt: skip
                values = [r.get(f"final/{pattern}/{key}") for r in runs.values()]
                cells.append(_fmt_spread(spread(values), digits))
            lines.append(f"{arm:<26}{pattern:<9}{cells[0]:>24}{cells[1]:>24}{cells[2]:>24}{cells[3]:>24}")
    if all("length_push_mean" in r for a in arms for r in summary["runs"][a].values()):
        lines += ["", "Length push of the kept samples (core.shaping: mean over a step's groups of cov(length, "
                  "advantage), tokens; < 0 asks for shorter answers), mean of the run's steps, mean over seeds "
                  "[min, max]; share of groups with mixed rewards:"]  # fmt: skip
        for arm in arms:
            runs = summary["runs"][arm].values()
            push = _fmt_spread(spread([r["length_push_mean"] for r in runs]), 2)
            mixed = _fmt_spread(spread([r["mixed_groups_mean"] for r in runs]), 2)
            lines.append(f"{arm:<26}push {push:>26}   mixed groups {mixed:>22}")
    if summary["vs_baseline"]:
        lines += ["", "Against the baseline of the same seed, mean [min, max] over seeds; * = the 95% t-interval over "
                  "seeds excludes no change (above the seed spread):"]  # fmt: skip
        shown = [
            ("policy length, held-out T=1 (ratio)", "final/all/sampled_length"),
            ("policy length, held-out greedy (ratio)", "final/all/greedy_length"),
            ("finished-candidate length, last 10 steps (ratio)", "finished_length_last10"),
            ("kept length, last 10 steps (ratio)", "kept_length_last10"),
            ("cumulative engine iterations (ratio)", "cumulative_engine_iterations"),
            ("cumulative tokens generated (ratio)", "cumulative_tokens_generated"),
            ("cumulative rollout seconds (ratio)", "cumulative_rollout_s"),
            ("kept-set length push, mean of steps (tokens, diff)", "length_push_mean"),
        ]
        patterns = sorted({k.split("/")[1] for c in summary["vs_baseline"].values() for k in c if "accuracy" in k})
        shown += [(f"accuracy {p}, {m} (points)", f"final/{p}/{m}_accuracy") for p in patterns for m in
                  ("greedy", "sampled")]  # fmt: skip
        others = [a for a in arms if a != "baseline"]
        lines.append(f"{'figure':<46}" + "".join(f"{a:>32}" for a in others))
        for label, key in shown:
            cells = [
                _fmt_spread(summary["vs_baseline"][a].get(key, {}), 3 if "ratio" in label else 1) for a in others
            ]
            lines.append(f"{label:<46}" + "".join(f"{c:>32}" for c in cells))
        lines += ["", *verdicts(summary, others)]
    return "\n".join(lines)


def verdicts(summary: dict, arms: list[str]) -> list[str]:
    """One plain sentence per arm and headline figure: the change, and whether it rises above the seed spread."""
    out = []
    for arm in arms:
        compared = summary["vs_baseline"][arm]
        patterns = sorted({k.split("/")[1] for k in compared if k.endswith("sampled_accuracy")} - {"all"})
        shown = [
            ("the policy's own length (held-out, T=1)", "final/all/sampled_length", "x", 3),
            ("cumulative engine iterations", "cumulative_engine_iterations", "x", 3),
            ("cumulative tokens generated", "cumulative_tokens_generated", "x", 3),
        ]
        shown += [(f"held-out accuracy on pattern {p} (T=1)", f"final/{p}/sampled_accuracy", " points", 1) for p in
                  patterns]  # fmt: skip
        for label, key, unit, digits in shown:
            s = compared.get(key)
            if not s or s.get("mean") is None:
                continue
            against = f"{s['mean']:.{digits}f}x the baseline's" if unit == "x" else f"{s['mean']:+.{digits}f} points"
            if "ci" not in s:
                out.append(f"{arm}: {label} {against} (one seed: no spread to compare with)")
                continue
            rises = "rises above" if s["above_spread"] else "does not rise above"
            out.append(
                f"{arm}: {label} {against} (95% interval over seeds {s['ci'][0]:.{digits}f} to "
                f"{s['ci'][1]:.{digits}f}); the difference {rises} the seed spread"
            )
    return out


# ---- plots -------------------------------------------------------------------------------------------------------
def _band(ax, steps, runs: list[list[float]], label: str, **style) -> None:
    values = np.asarray(runs, dtype=float)  # (seeds, points)
    line = ax.plot(steps, values.mean(axis=0), label=label, **style)[0]
    if len(runs) > 1:
        ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.2)


def plot_all(report: dict, out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = report["arms"]
    paths = {}
    colors = {arm: f"C{i}" for i, arm in enumerate(arms)}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for arm, data in arms.items():
        seeds, color = list(data["runs"].values()), colors[arm]
        steps = [s["step"] for s in seeds[0]["steps"]]
        _band(axes[0], steps, [[s["kept_length_mean"] for s in r["steps"]] for r in seeds], arm, color=color)
        _band(axes[1], steps, [[s["finished_length_mean"] for s in r["steps"]] for r in seeds], arm, color=color)
        evals = [r["evals"] for r in seeds]
        eval_steps = [e["step"] for e in evals[0]]
        _band(axes[2], eval_steps, [[e["sampled"]["patterns"]["all"]["length_mean"] for e in es] for es in evals],
              f"{arm} T=1", marker="o", color=color)  # fmt: skip
        _band(axes[2], eval_steps, [[e["greedy"]["patterns"]["all"]["length_mean"] for e in es] for es in evals],
              f"{arm} greedy", marker="x", linestyle="--", color=color)  # fmt: skip
    titles = ("kept samples (training)", "candidates that finished (training)", "held-out, no selection")
    for ax, title in zip(axes, titles):
        ax.set(xlabel="step", ylabel="mean response length (tokens)", title=title)
    fig.suptitle("response length over training: mean over seeds, band = min-max over seeds")
    paths["lengths"] = _save(plt, fig, axes, out / "lengths.png")

    patterns = sorted(
        {p for a in arms.values() for r in a["runs"].values() for p in r["evals"][0]["greedy"]["patterns"]}
    )
    fig, axes = plt.subplots(2, len(patterns), figsize=(5 * len(patterns), 7.5), squeeze=False)
    for arm, data in arms.items():
        evals = [r["evals"] for r in data["runs"].values()]
        eval_steps = [e["step"] for e in evals[0]]
        for col, pattern in enumerate(patterns):
            for row, mode in enumerate(("greedy", "sampled")):
                values = [[e[mode]["patterns"][pattern]["accuracy"] for e in es] for es in evals]
                _band(axes[row][col], eval_steps, values, arm, marker="o", color=colors[arm])
                axes[row][col].set(title=f"pattern {pattern}, {mode}", xlabel="step", ylabel="held-out accuracy")
    paths["accuracy"] = _save(plt, fig, axes.flat, out / "accuracy.png")

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for arm, data in arms.items():
        seeds = list(data["runs"].values())
        steps = [s["step"] for s in seeds[0]["steps"]]
        for ax, key in zip(axes, ("engine_iterations", "tokens_generated", "rollout_s")):
            _band(ax, steps, [np.cumsum([s[key] for s in r["steps"]]) for r in seeds], arm, color=colors[arm])
    for ax, label in zip(axes, ("engine iterations (vLLM's count)", "tokens generated", "rollout wall time (s)")):
        ax.set(xlabel="step", ylabel=f"cumulative {label}")
    fig.suptitle("cumulative rollout cost: mean over seeds, band = min-max over seeds")
    paths["cumulative"] = _save(plt, fig, axes, out / "cumulative.png")

    runs = [r for a in arms.values() for r in a["runs"].values()]
    if all("length_push" in s for r in runs for s in r["steps"]):  # runs recorded since the push exists
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for arm, data in arms.items():
            seeds = list(data["runs"].values())
            steps = [s["step"] for s in seeds[0]["steps"]]
            pushes = [np.cumsum([s["length_push"] for s in r["steps"]]) for r in seeds]
            _band(axes[0], steps, pushes, arm, color=colors[arm])
            mixed = [[s["mixed_groups"] for s in r["steps"]] for r in seeds]
            _band(axes[1], steps, mixed, arm, color=colors[arm])
        axes[0].set(xlabel="step", ylabel="cumulative length push (tokens)",
                    title="kept samples: cov(length, advantage)")  # fmt: skip
        axes[1].set(xlabel="step", ylabel="share of groups", title="groups with mixed rewards (kept samples)")
        fig.suptitle("what the updates ask of length (core.shaping): mean over seeds, band = min-max over seeds")
        paths["shaping"] = _save(plt, fig, axes, out / "shaping.png")
    return paths


def _save(plt, fig, axes, path: Path) -> str:
    """Grid and legend on every panel, then the figure to `path` (closed afterwards); returns the path."""
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def write_outputs(report: dict, text: str, out: Path) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out / "report.json"), "summary": str(out / "summary.txt")}
    Path(paths["json"]).write_text(json.dumps(report, indent=1) + "\n")
    Path(paths["summary"]).write_text(text + "\n")
    return {**paths, **plot_all(report, out)}
