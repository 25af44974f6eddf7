"""The censored length fit on real groups: a saved rollout benchmark's candidates, censored and uncensored views.

    python -m openrlhf_darts.bench.spread_real [--report benchmarks/rollout_smollm2/report.json]
        [--out benchmarks/spread_real_smollm2]

The rollout benchmark (``bench.rollout``) ran the same prompts through three variants on one engine: ``baseline`` (n
candidates), ``dual_end`` (every candidate to its end or the cap) and ``shortest_only`` (the surplus aborted at the
release length). Per prompt this prints ``core.length_fit.fit_lengths`` (cap = the benchmark's max tokens; truncated
and aborted lengths censored) on:

1. **Within-group views.** Each baseline and dual-end group as recorded (only the cap censors it), and the same group
   censored the way a shortest-only group of it would have been: its ``keep`` shortest untruncated finishes kept, every
   longer candidate aborted at the release length + 1. The ratio censored / uncensored view is the "same scale"
   property of issue 11 on real lengths. The raw std of the censored view (the estimate before issue 11) is printed
   beside it.
2. **Across variants.** The real shortest-only group (really aborted) against the pooled baseline + dual-end candidates
   of the same prompt (never aborted): different samples of one prompt, so only the medians are comparable.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from openrlhf_darts.core.length_fit import fit_lengths


def censor_like_shortest_only(lengths: list[int], truncated: list[bool], keep: int) -> tuple[list[int], list[bool]]:
    """The view a shortest-only group keeping ``keep`` would report: longer candidates aborted at release + 1."""
    valid = sorted(length for length, cut in zip(lengths, truncated) if not cut)
    if len(valid) < keep:
        return list(lengths), list(truncated)  # fewer than keep valid: nothing is aborted (the fill branch)
    partial = valid[keep - 1] + 1
    observed, censored = [], []
    for length, cut in zip(lengths, truncated):
        if length > partial:
            observed.append(partial)
            censored.append(True)
        else:
            observed.append(length)
            censored.append(cut)
    return observed, censored


def analyse(report: dict) -> dict:
    cap = report["meta"]["max_tokens"]
    variants = report["variants"]
    rows, within = [], []
    for i in range(len(variants["shortest_only"]["groups"])):
        group = {name: variants[name]["groups"][i] for name in ("baseline", "dual_end", "shortest_only")}
        row = {"prompt": i}
        for name, keep in (("baseline", 6), ("dual_end", 8), ("dual_end", 6)):
            lengths, truncated = group[name]["lengths"], group[name]["truncated"]
            full = fit_lengths(lengths, truncated, cap)
            observed, censored = censor_like_shortest_only(lengths, truncated, keep)
            view = fit_lengths(observed, censored, cap)
            aborted = sum(seen < length for seen, length in zip(observed, lengths))  # cut at the release length
            entry = {
                "group": name,
                "candidates": len(lengths),
                "keep": keep,
                "aborted": aborted,
                "truncated": sum(truncated),
                "uncensored_fit_std": full.std,
                "censored_fit_std": view.std,
                "raw_censored_std": statistics.stdev(observed),
                "raw_uncensored_std": statistics.stdev(lengths),
            }
            row[f"{name}_keep{keep}"] = entry
            if aborted:
                within.append(entry)
        real = group["shortest_only"]
        censored = [a or t for a, t in zip(real["aborted"], real["truncated"])]
        pooled_lengths = group["baseline"]["lengths"] + group["dual_end"]["lengths"]
        pooled_truncated = group["baseline"]["truncated"] + group["dual_end"]["truncated"]
        row["shortest_only"] = {
            "aborted": sum(real["aborted"]),
            "truncated": sum(real["truncated"]),
            "fit_std": fit_lengths(real["lengths"], censored, cap).std,
            "fit_mean": fit_lengths(real["lengths"], censored, cap).mean,
            "raw_std": statistics.stdev(real["lengths"]),
            "raw_mean": statistics.fmean(real["lengths"]),
        }
        row["pooled_uncensored"] = {
            "candidates": len(pooled_lengths),
            "fit_std": fit_lengths(pooled_lengths, pooled_truncated, cap).std,
            "fit_mean": fit_lengths(pooled_lengths, pooled_truncated, cap).mean,
            "raw_std": statistics.stdev(pooled_lengths),
            "raw_mean": statistics.fmean(pooled_lengths),
        }
        rows.append(row)
    summary = {
        "within_groups_with_aborts": len(within),
        "median_censored_over_uncensored_fit": statistics.median(
            e["censored_fit_std"] / e["uncensored_fit_std"] for e in within
        ),
        "median_raw_censored_over_raw_uncensored": statistics.median(
            e["raw_censored_std"] / e["raw_uncensored_std"] for e in within
        ),
        "median_shortest_only_fit_over_pooled_fit": statistics.median(
            r["shortest_only"]["fit_std"] / r["pooled_uncensored"]["fit_std"] for r in rows
        ),
        "median_shortest_only_raw_over_pooled_raw": statistics.median(
            r["shortest_only"]["raw_std"] / r["pooled_uncensored"]["raw_std"] for r in rows
        ),
    }
    return {"cap": cap, "rows": rows, "summary": summary}


def render(result: dict, source: str) -> str:
    lines = [f"source: {source}, cap {result['cap']}; lengths in tokens; fit = fit_lengths(...).std", ""]
    lines.append("1. one group, two views: as recorded vs censored like a shortest-only group keeping `keep`")
    lines.append(
        "prompt  group      M'  keep  aborted  trunc | fit uncens  fit cens  ratio | raw uncens  raw cens  ratio"
    )
    for row in result["rows"]:
        for key in ("baseline_keep6", "dual_end_keep8", "dual_end_keep6"):
            e = row[key]
            fit_u, fit_c, raw_u, raw_c = (
                e["uncensored_fit_std"], e["censored_fit_std"], e["raw_uncensored_std"], e["raw_censored_std"],
            )  # fmt: skip
            lines.append(
                f"{row['prompt']:6d}  {e['group']:9s} {e['candidates']:3d}  {e['keep']:4d}  {e['aborted']:7d}  "
                f"{e['truncated']:5d} | {fit_u:10.1f}  {fit_c:8.1f}  {fit_c / fit_u:5.2f} | "
                f"{raw_u:10.1f}  {raw_c:8.1f}  {raw_c / raw_u:5.2f}"
            )
    lines.append("")
    lines.append("2. the real shortest-only group (12 candidates, aborted) vs the same prompt's 18 never-aborted ones")
    lines.append(
        "prompt  aborted  trunc | fit std  pooled fit std | raw std  pooled raw std | fit mean  pooled fit mean"
    )
    for row in result["rows"]:
        s, p = row["shortest_only"], row["pooled_uncensored"]
        lines.append(
            f"{row['prompt']:6d}  {s['aborted']:7d}  {s['truncated']:5d} | {s['fit_std']:7.1f}  "
            f"{p['fit_std']:14.1f} | {s['raw_std']:7.1f}  {p['raw_std']:14.1f} | {s['fit_mean']:8.1f}  "
            f"{p['fit_mean']:15.1f}"
        )
    summary = result["summary"]
    lines.append("")
    lines.append(
        f"medians over the {summary['within_groups_with_aborts']} views with aborted candidates: censored / "
        f"uncensored fit {summary['median_censored_over_uncensored_fit']:.3f}, "
        f"raw {summary['median_raw_censored_over_raw_uncensored']:.3f}"
    )
    lines.append(
        "medians over the prompts: shortest-only / pooled fit "
        f"{summary['median_shortest_only_fit_over_pooled_fit']:.3f}, "
        f"raw {summary['median_shortest_only_raw_over_pooled_raw']:.3f}"
    )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", default="benchmarks/rollout_smollm2/report.json")
    parser.add_argument("--out", default="benchmarks/spread_real_smollm2")
    args = parser.parse_args(argv)
    result = analyse(json.loads(Path(args.report).read_text()))
    text = render(result, args.report)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "printed.txt").write_text(text + "\n")
    (out / "report.json").write_text(json.dumps({"source": args.report, **result}, indent=1) + "\n")
    _plot(result, out / "spread_real.png")
    print(f"saved {out}/printed.txt, report.json, spread_real.png")


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    entries = [e for row in result["rows"] for k, e in row.items() if k.endswith(("keep6", "keep8")) and e["aborted"]]
    ax.scatter(
        [e["uncensored_fit_std"] for e in entries], [e["censored_fit_std"] for e in entries], label="censored fit"
    )
    ax.scatter([e["raw_uncensored_std"] for e in entries], [e["raw_censored_std"] for e in entries], marker="x",
               label="raw std (before issue 11)")  # fmt: skip
    top = max(max(e["uncensored_fit_std"], e["raw_uncensored_std"]) for e in entries) * 1.1
    ax.plot([0, top], [0, top], color="grey", linewidth=0.8)
    ax.set_xlabel("uncensored view (tokens)")
    ax.set_ylabel("censored view (tokens)")
    ax.set_title("One group, two views (SmolLM2, cap 256)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
