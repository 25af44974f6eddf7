"""Probe (not product code): does the tiny-verbose model learn the "count" level of `local.sft`, i.e. is an answer
counted one at a time longer *and* more often right than the same sum stated at once (Pattern II, effective depth)?

Fine-tunes the policy of a `local.sft.DIFFICULTIES` mix with `ensure_verbose_model` (cached like the product's, so
the probe's model is the one the benchmark will use), then samples held-out problems of each level x 4 at
temperature 1 with Hugging Face `generate` and prints, per level: accuracy, mean/p90 length, the within-prompt
correlation of length and correctness, the share of prompts whose samples mix right and wrong, and for "count" the
accuracy of counted and of at-once answers. One JSON line at the end.

    python benchmarks/count_probe/probe.py [MIX] [STEPS] [PER_LEVEL]
"""

import json
import random
import re
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from openrlhf_darts.bench.tasks import extract_answer
from openrlhf_darts.core.shaping import step_length_push
from openrlhf_darts.local.sft import DIFFICULTIES, _level_problems, ensure_verbose_model

mix = sys.argv[1] if len(sys.argv) > 1 else "copy_count"
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 1500
per_level = int(sys.argv[3]) if len(sys.argv) > 3 else 100
t0 = time.time()
path = ensure_verbose_model(steps=steps, difficulty=mix)
print("policy", path, "ready in", round(time.time() - t0), "s", flush=True)
torch.set_num_threads(1)
torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path).eval()


result = {"mix": mix, "steps": steps}
for level in DIFFICULTIES[mix]:
    problems = _level_problems(level, per_level, 987_654)  # far from the SFT and RL seeds
    rows, styles, shown = [], {"counted": [0, 0], "at_once": [0, 0]}, 0
    for p in problems:
        pre = tok.apply_chat_template([{"role": "user", "content": p["prompt"]}], tokenize=False,
                                      add_generation_prompt=True)
        ids = tok(pre, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = model.generate(ids.repeat(4, 1), do_sample=True, temperature=1.0, max_new_tokens=256,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        group = []
        for o in out:
            gen = o[ids.shape[1]:]
            n = int((gen != tok.pad_token_id).sum())
            text = tok.decode(gen, skip_special_tokens=True)
            right = extract_answer(text) == p["answer"]
            group.append((n, float(right)))
            if level == "count":
                style = "counted" if ":" in text.split("\n")[0] else "at_once"
                styles[style][0] += right
                styles[style][1] += 1
            if shown < 3:
                print(level, repr(text[:160]), "label", p["answer"], flush=True)
                shown += 1
        rows.append(group)
    lengths = sorted(n for g in rows for n, _ in g)
    # The mean over mixed groups of each group's length-correctness correlation, and the share of mixed groups
    # (core.shaping). Not bench.dynamics' within_prompt_corr, which pools all samples centred on their prompt's means.
    groups = step_length_push([n for g in rows for n, _ in g], [r for g in rows for _, r in g], group_size=4)
    entry = {
        "accuracy": round(statistics.mean(r for g in rows for _, r in g), 3),
        "length_mean": round(statistics.mean(lengths), 1),
        "length_p90": lengths[int(0.9 * (len(lengths) - 1))],
        "within_prompt_corr": round(groups["corr"], 3) if groups["corr"] is not None else None,
        "mixed_groups": round(groups["mixed_share"], 3),
    }
    if level == "count":
        for style, (right, total) in styles.items():
            entry[f"{style}_share"] = round(total / (4 * len(rows)), 3)
            entry[f"{style}_accuracy"] = round(right / total, 3) if total else None
    result[level] = entry
    print(level, entry, flush=True)
result["seconds"] = round(time.time() - t0)
print(json.dumps(result))
