r"""Per-seed held-out figures of a saved bench.dynamics run, at every evaluation, not only the last.

python benchmarks/dynamics_tiny/per_seed.py benchmarks/dynamics_tiny/report.json \
    > benchmarks/dynamics_tiny/per_seed.txt

Reads only report.json (the evaluations bench.dynamics recorded). Prints, per decoding mode and pattern:
accuracy / mean length per arm, seed and evaluation step; then each arm's accuracy against the baseline of the same
seed, in points, mean [min, max] over seeds, per evaluation step. Last, per pattern at T = 1: the share of held-out
prompts whose samples mix right and wrong answers, and the within-prompt correlation of length and correctness.
"""

import json
import sys


def figure(run: dict, mode: str, pattern: str) -> list[tuple[int, float, float]]:
    """(step, accuracy, mean length) of every evaluation of one run."""
    out = []
    for ev in run["evals"]:
        fig = ev[mode]["patterns"][pattern]
        out.append((ev["step"], fig["accuracy"], fig["length_mean"]))
    return out


def main(path: str) -> None:
    arms = json.load(open(path))["arms"]
    first_run = next(iter(next(iter(arms.values()))["runs"].values()))
    for mode in ("greedy", "sampled"):
        for pattern in sorted(first_run["evals"][0][mode]["patterns"]):
            print(f"\n{mode}, pattern {pattern}: accuracy / mean length (tokens) per evaluation step")
            for arm, record in arms.items():
                for seed, run in sorted(record["runs"].items(), key=lambda kv: int(kv[0])):
                    cells = [f"{step:>3}: {acc:.3f}/{length:5.1f}" for step, acc, length in figure(run, mode, pattern)]
                    print(f"  {arm:<24} seed {seed}  " + "  ".join(cells))
            if "baseline" not in arms:
                continue
            print(
                f"{mode}, pattern {pattern}: accuracy - baseline of the same seed (points), mean [min, max] over seeds"
            )
            base = arms["baseline"]["runs"]
            for arm, record in arms.items():
                if arm == "baseline":
                    continue
                seeds = [s for s in record["runs"] if s in base]
                per_seed = []
                for s in seeds:
                    pairs = zip(figure(record["runs"][s], mode, pattern), figure(base[s], mode, pattern))
                    per_seed.append([100 * (a[1] - b[1]) for a, b in pairs])
                steps = [step for step, _, _ in figure(record["runs"][seeds[0]], mode, pattern)]
                cells = []
                for k, step in enumerate(steps):
                    diffs = [d[k] for d in per_seed]
                    mean = sum(diffs) / len(diffs)
                    cells.append(f"{step:>3}: {mean:+5.1f} [{min(diffs):+5.1f}, {max(diffs):+5.1f}]")
                print(f"  {arm:<24} ({len(seeds)} seeds)  " + "  ".join(cells))
    for pattern in sorted(first_run["evals"][0]["sampled"]["patterns"]):
        print(f"\nsampled, pattern {pattern}: mixed prompts / within-prompt corr(length, right) per evaluation step")
        for arm, record in arms.items():
            for seed, run in sorted(record["runs"].items(), key=lambda kv: int(kv[0])):
                cells = []
                for ev in run["evals"]:
                    fig = ev["sampled"]["patterns"][pattern]
                    corr = "  n/a" if fig["within_prompt_corr"] is None else f"{fig['within_prompt_corr']:+.2f}"
                    cells.append(f"{ev['step']:>3}: {fig['mixed_groups']:.3f}/{corr}")
                print(f"  {arm:<24} seed {seed}  " + "  ".join(cells))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/dynamics_tiny/report.json")
