"""Inputs of the Pattern I-only dynamics run: prompt files from local.sft's "easy" mix, and the SFT policy on it."""
import json, sys
from openrlhf_darts.local.sft import mixed_problems, train_verbose_model
out = sys.argv[1]
train = mixed_problems(240, 101, "easy")
seen = {p["prompt"] for p in train}  # held-out: 64 unique unseen problems, as bench.dynamics builds its own
evals = list({p["prompt"]: p for p in mixed_problems(4 * 64 + 16, 202, "easy") if p["prompt"] not in seen}.values())[:64]
for name, rows in (("train", train), ("eval", evals)):
    with open(f"{out}/{name}.jsonl", "w") as f:
        for p in rows:
            f.write(json.dumps({"prompt": p["prompt"], "answer": p["answer"], "pattern": p["pattern"]}) + "\n")
print(len(train), len(evals))
print(json.dumps(train_verbose_model(f"{out}/policy", steps=1500, seed=0, difficulty="easy")))
