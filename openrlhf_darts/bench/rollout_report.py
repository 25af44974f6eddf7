"""The rollout benchmark's figures, table and plot, from the per-prompt groups `bench.rollout_engine` records.

**Engine iterations**: the engine steps that sampled a token while the variant ran, counted by vLLM itself in the
engine actor (`rollout/engine_counters.py`). This is how many decode steps the rollout took, whatever the engine admits
at once.
**Longest request**: the largest number of tokens any request of the batch decoded, aborted candidates counted at their
partial length. It equals the engine iterations only when every request is admitted at once and all start in the same
step (``all_admitted`` compares the requests and their KV blocks with the engine's ``max_num_seqs`` and KV cache);
otherwise the engine needs more iterations than that.
**Oracle longest request**: the longest request the batch would have needed given the recorded candidate lengths: per
prompt, the max length for ``baseline`` and ``dual_end``, and the n-th shortest valid length for ``shortest_only`` (the
max when fewer than n are valid); the batch's oracle is the largest over its prompts; for ``tail_batching`` the
largest over its B kept groups (the B-th completion). Longest minus oracle is the abort latency.
**Generated tokens** are counted twice: from the recorded lengths (``tokens_generated``) and by vLLM itself
(``engine_tokens_generated``, its ``vllm:generation_tokens`` counter over the variant); the two are equal when every
token the engine produced is in a recorded length (tests/contract/test_bench.py checks it).

`write_outputs` writes ``report.json`` (figures plus every prompt's candidate lengths, truncation and abort flags per
variant, so ``python -m openrlhf_darts.sim`` can replay them), ``lengths.png`` and ``table.txt``.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openrlhf_darts.core.percentile import nearest_rank


# ---- figures -----------------------------------------------------------------------------------------------------
def length_summary(values: Sequence[int]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "p50": nearest_rank(values, 50),
        "p90": nearest_rank(values, 90),
        "max": float(max(values)),
    }


def prompt_oracle(group: dict, n: int, shortest_only: bool) -> int:
    """Earliest decode step the prompt could be done given its candidates' lengths (module docstring)."""
    if not shortest_only:
        return max(group["lengths"])
    valid = sorted(
        length for length, cut, ab in zip(group["lengths"], group["truncated"], group["aborted"]) if not (cut or ab)
    )
    return valid[n - 1] if len(valid) >= n else max(group["lengths"])


def summarize(run: dict[str, Any], n: int, shortest_only: bool, batch: int | None = None) -> dict[str, Any]:
    """The per-variant figures of the table from one ``run_variant`` result (``run_tail_variant``: pass ``batch``,
    the number of prompts it keeps; per-prompt figures then cover the kept groups)."""
    groups = run["groups"]
    all_lengths = [length for g in groups for length in g["lengths"]]
    kept_lengths = [g["lengths"][j] for g in groups for j in g["kept"]]
    for i, g in enumerate(groups):
        if len(g["kept"]) not in ((n,) if batch is None else (0, n)):
            raise RuntimeError(f"prompt {i} kept {len(g['kept'])} candidates; expected exactly n={n}")
    trained = [g for g in groups if g["kept"]]
    if len(trained) != (len(groups) if batch is None else batch):
        raise RuntimeError(f"{len(trained)} of {len(groups)} prompts kept their group; expected {batch}")
    generated, kept = sum(all_lengths), sum(kept_lengths)
    oracles = [prompt_oracle(g, n, shortest_only) for g in trained]
    rewards = [r for g in groups for r in g["rewards"] if r is not None]

    def ratio(lengths: Sequence[int]) -> float:
        median = statistics.median(lengths)
        return max(lengths) / median if median > 0 else float("nan")

    return {
        "candidates": len(all_lengths),
        "wall_s": run["wall_s"],
        "engine_iterations": run["engine_iterations"],
        "longest_request": max(all_lengths),
        "oracle_longest_request": max(oracles),
        "tokens_generated": generated,
        "tokens_kept": kept,
        "tokens_wasted": generated - kept,
        # vLLM's own count of the tokens it generated for this variant (vllm:generation_tokens); equals
        # tokens_generated when the recorded lengths are right (aborted candidates at their partial length).
        "engine_tokens_generated": run["engine_tokens_generated"],
        "tokens_per_s": generated / run["wall_s"] if run["wall_s"] > 0 else float("nan"),
        "kept_length": length_summary(kept_lengths),
        "all_length": length_summary(all_lengths),
        "max_median_ratio_all": statistics.fmean(ratio(g["lengths"]) for g in trained),
        "max_median_ratio_kept": statistics.fmean(ratio([g["lengths"][j] for j in g["kept"]]) for g in trained),
        "aborted": sum(sum(g["aborted"]) for g in groups),
        # Groups with fewer than n untruncated finishes: the fill branch of §3(b) ran, and no early stop was possible.
        "underfilled_groups": sum(
            sum(not (cut or ab) for cut, ab in zip(g["truncated"], g["aborted"])) < n for g in trained
        ),
        "prompts_launched": len(groups),
        "prompts_kept": len(trained),
        "truncated": sum(sum(g["truncated"]) for g in groups),
        "kept_reward_mean": statistics.fmean(rewards) if rewards else None,
        "prompt_oracle_steps": oracles,
    }


def ratios_vs_baseline(stats: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each variant's figures over the baseline's (`stats` maps variant name -> `summarize` result)."""
    base = stats["baseline"]
    return {
        name: {
            "engine_iterations": s["engine_iterations"] / base["engine_iterations"],
            "longest_request": s["longest_request"] / base["longest_request"],
            "oracle_longest_request": s["oracle_longest_request"] / base["oracle_longest_request"],
            "wall_s": s["wall_s"] / base["wall_s"],
            "tokens_generated": s["tokens_generated"] / base["tokens_generated"],
            "kept_length_mean": s["kept_length"]["mean"] / base["kept_length"]["mean"],
        }
        for name, s in stats.items()
    }


# ---- table, plot, files -------------------------------------------------------------------------------------------
def format_table(report: dict[str, Any]) -> str:
    """The comparison table, metrics as rows and variants as columns."""
    names = list(report["variants"])
    stats = {name: report["variants"][name]["stats"] for name in names}
    plans = {name: report["variants"][name]["plan"] for name in names}
    ratios = report.get("ratios_vs_baseline", {})

    width = 19  # fits "1234/1234/1234/1234" with a gap

    def row(label: str, values: list[str]) -> str:
        return f"{label:<34}" + "".join(f"{v:>{width}}" for v in values)

    def lengths(key: str) -> list[str]:
        return [
            "{mean:.0f}/{p50:.0f}/{p90:.0f}/{max:.0f}".format(**stats[name][key]) for name in names
        ]  # fmt: skip

    lines = [row("metric", names), "-" * (34 + width * len(names))]
    lines.append(
        row("candidates / kept per prompt", [f"{plans[m]['num_candidates']}/{plans[m]['num_keep']}" for m in names])
    )
    lines.append(row("num_long (L)", [str(plans[m]["num_long"]) for m in names]))
    lines.append(
        row("prompts launched / kept", [f"{stats[m]['prompts_launched']}/{stats[m]['prompts_kept']}" for m in names])
    )
    lines.append(row("wall time (s)", [f"{stats[m]['wall_s']:.2f}" for m in names]))
    lines.append(row("engine iterations (vLLM's count)", [str(stats[m]["engine_iterations"]) for m in names]))
    if ratios:
        lines.append(row("  ratio vs baseline", [f"{ratios[m]['engine_iterations']:.3f}" for m in names]))
    lines.append(row("longest request (tokens)", [str(stats[m]["longest_request"]) for m in names]))
    lines.append(row("oracle longest request (tokens)", [str(stats[m]["oracle_longest_request"]) for m in names]))
    lines.append(row("all requests admitted at once", ["yes" if stats[m]["all_admitted"] else "NO" for m in names]))
    lines.append(row("tokens generated", [str(stats[m]["tokens_generated"]) for m in names]))
    lines.append(row("tokens kept", [str(stats[m]["tokens_kept"]) for m in names]))
    lines.append(row("tokens wasted", [str(stats[m]["tokens_wasted"]) for m in names]))
    lines.append(row("tokens / s", [f"{stats[m]['tokens_per_s']:.0f}" for m in names]))
    lines.append(row("kept length mean/p50/p90/max", lengths("kept_length")))
    lines.append(row("all length mean/p50/p90/max", lengths("all_length")))
    lines.append(row("per-prompt max/median, all", [f"{stats[m]['max_median_ratio_all']:.2f}" for m in names]))
    lines.append(row("per-prompt max/median, kept", [f"{stats[m]['max_median_ratio_kept']:.2f}" for m in names]))
    lines.append(
        row("aborted / truncated candidates", [f"{stats[m]['aborted']}/{stats[m]['truncated']}" for m in names])
    )
    lines.append(row("groups with < n untruncated", [str(stats[m]["underfilled_groups"]) for m in names]))
    rewards = [stats[m]["kept_reward_mean"] for m in names]
    lines.append(row("kept reward mean", ["-" if r is None else f"{r:.3f}" for r in rewards]))
    return "\n".join(lines)


def plot_lengths(report: dict[str, Any], path: str | os.PathLike) -> None:
    """Histograms of kept vs all candidate lengths, one panel per variant (aborted candidates at partial length)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["variants"])
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), sharex=True, squeeze=False)
    top = max(length for v in report["variants"].values() for g in v["groups"] for length in g["lengths"])
    bins = max(5, min(40, top // 4 or 1))
    for ax, name in zip(axes[0], names):
        groups = report["variants"][name]["groups"]
        all_lengths = [length for g in groups for length in g["lengths"]]
        kept = [g["lengths"][j] for g in groups for j in g["kept"]]
        ax.hist(all_lengths, bins=bins, range=(0, top), alpha=0.5, label=f"all ({len(all_lengths)})")
        ax.hist(kept, bins=bins, range=(0, top), alpha=0.7, label=f"kept ({len(kept)})")
        stats = report["variants"][name]["stats"]
        ax.axvline(stats["longest_request"], color="k", linestyle="--", linewidth=1, label="longest request")
        ax.set_title(f"{name}: {report['variants'][name]['plan']['num_candidates']} cand./prompt")
        ax.set_xlabel("response length (tokens)")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("candidates")
    meta = report["meta"]
    task = f", task={meta['task']}" if "task" in meta else ""
    fig.suptitle(f"rollout lengths, model={meta.get('model', '?')}{task}, n={meta.get('n', '?')}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(report: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, str]:
    """report.json, lengths.png and table.txt under ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "png": out / "lengths.png", "table": out / "table.txt"}
    paths["json"].write_text(json.dumps(report, indent=1) + "\n")
    plot_lengths(report, paths["png"])
    paths["table"].write_text(format_table(report) + "\n")
    return {key: str(path) for key, path in paths.items()}
