r"""Per-seed held-out figures of a saved bench.dynamics run, at every evaluation, not only the last.

python benchmarks/dynamics_tiny/per_seed.py benchmarks/dynamics_tiny/report.json \
    > benchmarks/dynamics_tiny/per_seed.txt

Reads only report.json (the evaluations bench.dynamics recorded). Prints, per decoding mode and pattern:
accuracy / mean length per arm, seed and evaluation step; then each arm's accuracy against the baseline of the same
seed, in points, and its mean length as a ratio to that baseline's, each mean [min, max] over seeds, per evaluation
step. Last, per pattern at T = 1: the share of held-out prompts whose samples mix right and wrong answers, and the
within-prompt correlation of length and correctness.
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


def paired(arms: dict, mode: str, pattern: str, title: str, index: int, against, fmt: str) -> None:
    """Each arm's `against(arm's figure, baseline's figure)` at every evaluation step, mean [min, max] over the seeds
    both have, each number printed with `fmt`; `index` picks the figure of `figure()`'s rows (1 accuracy, 2 mean
    length)."""
    print(f"{mode}, pattern {pattern}: {title}, mean [min, max] over seeds")
    base = arms["baseline"]["runs"]
    for arm, record in arms.items():
        if arm == "baseline":
            continue
        seeds = [s for s in record["runs"] if s in base]
        per_seed = []
        for s in seeds:
            pairs = zip(figure(record["runs"][s], mode, pattern), figure(base[s], mode, pattern))
            per_seed.append([against(a[index], b[index]) for a, b in pairs])
        steps = [step for step, _, _ in figure(record["runs"][seeds[0]], mode, pattern)]
        cells = []
        for k, step in enumerate(steps):
            values = [v[k] for v in per_seed]
            mean = sum(values) / len(values)
            low, high = fmt.format(min(values)), fmt.format(max(values))
            cells.append(f"{step:>3}: {fmt.format(mean)} [{low}, {high}]")
        print(f"  {arm:<24} ({len(seeds)} seeds)  " + "  ".join(cells))


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
            title = "accuracy - baseline of the same seed (points)"
            paired(arms, mode, pattern, title, 1, lambda a, b: 100 * (a - b), "{:+5.1f}")
            title = "mean length / baseline of the same seed (ratio)"
            paired(arms, mode, pattern, title, 2, lambda a, b: a / b, "{:5.3f}")
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
