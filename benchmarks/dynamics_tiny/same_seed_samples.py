r"""Do arms of one seed draw the same T = 1 samples at step 0? (benchmarks/README.md, "What "same seed" pairs")

python benchmarks/dynamics_tiny/same_seed_samples.py extract /work/runs/dyn_default/runs \
    > benchmarks/dynamics_tiny/step0_sampled.json
python benchmarks/dynamics_tiny/same_seed_samples.py compare benchmarks/dynamics_tiny/step0_sampled.json \
    > benchmarks/dynamics_tiny/same_seed_samples.txt

`extract` keeps, from each run's first `evals.jsonl` record (step 0, before any training), the engine iterations and
every answer's prompt index, length and reward of both passes (greedy and T = 1); `report.json` keeps only their
summaries. `compare` says whether the greedy passes agree, then counts, for every pair of runs of one seed, the
prompts whose T = 1 samples (as a multiset of (length, reward)) agree, next to the two passes' iteration counts.
Standard library only.
"""

import itertools
import json
import sys
from pathlib import Path


def extract(runs_dir: str) -> None:
    out = {}
    for path in sorted(Path(runs_dir).glob("*/seed*/evals.jsonl")):
        with open(path) as f:
            record = json.loads(f.readline())
        sampled = record["sampled"]
        arm, seed = path.parent.parent.name, path.parent.name.removeprefix("seed")
        rows = list(zip(sampled["prompt"], sampled["length"], sampled["reward"]))
        greedy = record["greedy"]
        out.setdefault(seed, {})[arm] = {
            "iterations": sampled["iterations"],
            "samples": rows,
            "greedy_iterations": greedy["iterations"],
            "greedy_answers": list(zip(greedy["prompt"], greedy["length"], greedy["reward"])),
        }
    json.dump(out, sys.stdout)


def compare(path: str) -> None:
    same, differ = [], []
    seeds = json.load(open(path))
    greedy = [run for runs in seeds.values() for run in runs.values()]
    answers = {json.dumps(sorted(run["greedy_answers"])) for run in greedy}
    iterations = [run["greedy_iterations"] for run in greedy]
    print(
        f"greedy passes: {len(answers)} distinct answer set(s) over {len(greedy)} runs, "
        f"{min(iterations):.0f}-{max(iterations):.0f} engine iterations"
    )
    for seed, runs in sorted(seeds.items(), key=lambda kv: int(kv[0])):
        per_prompt = {}
        for arm, run in runs.items():
            groups = {}
            for prompt, length, reward in run["samples"]:
                groups.setdefault(prompt, []).append((length, reward))
            per_prompt[arm] = {prompt: sorted(g) for prompt, g in groups.items()}
        for a, b in itertools.combinations(sorted(runs), 2):
            agree = sum(per_prompt[a][p] == per_prompt[b].get(p) for p in per_prompt[a])
            its = (runs[a]["iterations"], runs[b]["iterations"])
            (same if its[0] == its[1] else differ).append(agree)
            print(f"seed {seed}  {a:<24} {b:<24} iterations {its[0]:>5.0f} {its[1]:>5.0f}  prompts agreeing {agree}")
    print(f"equal iterations: {len(same)} pairs, prompts agreeing {sorted(same)}")
    print(f"different iterations: {len(differ)} pairs, prompts agreeing {min(differ)}-{max(differ)}")


if __name__ == "__main__":
    {"extract": extract, "compare": compare}[sys.argv[1]](sys.argv[2])
