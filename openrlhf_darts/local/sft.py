"""The local task's starting policy: a tiny Qwen2 fine-tuned on a two-pattern task (DARTS_SPEC.md §1, §4).

Why: a random model's lengths say nothing about reasoning, and SmolLM2 is slow on two cores. DARTS shapes
*intra-prompt* length spread, and its case rests on two kinds of length, so the local task carries both, each problem
tagged with its pattern (`mixed_problems(...)["pattern"]`):

- **Pattern I, ineffective verbosity** ("copy" and "one_op" levels: "Ava has 17 apples. How many apples does Ava
  have?", or one one-digit step): the answer comes with 0-14 self-check sentences whose number is drawn per target
  (about half 0-1, a third 2-5, the rest 6-14), independent of the prompt, and changes nothing:

      Start with 47 cookies. 47 + 6 = 53. Let me check: 47 + 6 = 53. Yes. So far so good. ...
      Answer: 53

- **Pattern II, effective depth** ("lookup" level, `bench.tasks.make_lookup_problems`: "A = 17. C = 23. B = A.
  D = B. E = C. What is D?"): half the targets write every hop, copied from the prompt ("D = B. B = A. A = 17."),
  the other half state the value at once ("D = 17."). A hop is one short copy; stating the value at once means
  resolving 2-3 references in one forward pass, which a 3-layer model can only guess (1 in 3 values).

- **Pattern II, a depth the model learns** ("count" level, mix "copy_count", with the copy level as its Pattern I):
  the one-step problems answered either by counting one at a time with the steps left ("47 + 3: 48 2, 49 1, 50 0.")
  or at once ("47 + 3 = 50."), half the targets each (`count_target`). A counting step needs the number just written
  and its successor; the sum at once needs the addition table in one forward pass. After 3,000 steps (`SFT_STEPS`),
  sampled at temperature 1 on 100 held-out problems x 4: counted answers right 0.934, at once 0.633, correlation of
  length and correctness within a prompt +0.45 (copy problems: right 0.978); after 1,500 steps 0.203 and 0.052
  (benchmarks/count_probe/). `bench.dynamics` runs on this mix by default.

The default mix of local runs ("two_pattern") is half lookups, 35% copy and 15% one-step problems. Chains of
arithmetic operations ("chain") are out of reach of 0.4 M parameters trained for minutes (reward about 0), so they
are not in it.

The model reuses the tiny model's tokenizer and chat template with a slightly larger body (hidden 96, 3 layers, head
size 32 for vLLM's CPU attention), about 0.4 M parameters; loss on response tokens only; 1,500 AdamW steps of 16, one
torch thread (a busy machine made two threads 5x slower). Built once and cached under ``<cache>/tiny-verbose-2p``
(stamped like the other local models; recipe 2, Pattern I only, was ``tiny-verbose``); the same seed and recipe give
the same weights on one machine, not across machines: CPU kernels differ in their rounding, and 1,500 steps amplify it
(the Pattern I policy, built on two 2-core machines: step-0 greedy accuracy 0.688 and 0.641 on the same 64 held-out
problems, greedy length 125 and 146 tokens; benchmarks/README.md, "The main job, timed").

Measured on a shared 2-core machine (load average 8-30), Hugging Face sampling at temperature 1, 100 held-out problems
per pattern x 4 samples (`bench.dynamics` measures the same with vLLM at step 0 of every run):

| recipe | first-time SFT | pattern | right | length mean / p90 | corr(length, right) | mixed groups | hop by hop |
|---|---|---|---|---|---|---|---|
| 3: names ("Ben has as many apples as Ava.") | 702 s, 441 CPU-s | I | 0.710 | 84.6 / 193 | -0.238 | 0.13 | |
| | | II | 0.107 | 49.6 / 98 | 0.001 | 0.32 | 42%, right 0.112 |
| 4 (this one): single-letter variables | 444 s, 294 CPU-s | I | 0.158 | 73.9 / 182 | -0.056 | 0.37 | |
| | | II | 0.035 | 23.8 / 37 | 0.013 | 0.13 | 41%, right 0.042 |
| 4 with 3,000 steps | 834 s, 626 CPU-s | I | 0.610 | 56.6 / 122 | -0.090 | 0.30 | |
| | | II | 0.075 | 22.8 / 37 | -0.011 | 0.25 | 40%, right 0.070 |

("mixed groups": prompts whose 4 samples hold both right and wrong answers; "hop by hop": share of Pattern II answers
written hop by hop and their accuracy; the answers that state a value at once were right 0.104, 0.030 and 0.079 of
the time.)

**Not yet what the benchmark needs.** In neither recipe did the model learn to copy a hop: writing the hops is no
more often right than stating a value at once, so Pattern II shows no length-accuracy relation yet; recipe 4 also lost
most of recipe 3's Pattern I accuracy at 1,500 steps (3,000 steps bring it back to 0.61, not the hops). Names spelled
letter by letter by this tokenizer put the subject a dozen tokens before the name to copy; single letters make it
three, but the model still did not learn the copy: greedy, given the first two tokens of a hop ("C ="), it wrote a
number in 40 of 40 held-out lookups (3,000-step model). Candidates for the next recipe: a larger body, a curriculum of
one-hop lookups first, or hops whose key and value sit on adjacent tokens.

**Tried since, and not enough either** (`benchmarks/lookup_probe/`: lookups only, the same shape, 100 held-out
problems x 4 at temperature 1): the task as it is (600 steps: hop by hop right 0.03, at once 0.04); key and value on
adjacent tokens ("DB. A17.", a one-token induction copy: 0.03 / 0.06 at 600 steps, 0.15 / 0.13 at 3,000); the same
with full multi-head attention (3 KV heads, 2,000 steps: 0.08 / 0.09); and with 40% of examples asking to repeat the
facts verbatim, a dense copying curriculum (0.04 / 0.04; the repeat task's loss stayed near 0.9). The model invents
letters that are not in the prompt ("TZ. ... What is T?" -> "TQ. QR. R55."): it does not learn to copy by content at
this size and training length, so Pattern II stays near the floor in every recipe tried, and the two-pattern task can
only speak to Pattern I.

Run it alone: ``python -m openrlhf_darts.local.sft [--steps N] [--cache_dir DIR]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import shutil
import tempfile
import time
from pathlib import Path

from openrlhf_darts.bench.tasks import make_lookup_problems, make_problems
from openrlhf_darts.models import default_cache_dir, resolve_model

logger = logging.getLogger(__name__)

DIR_NAME = "tiny-verbose-2p"  # two-pattern recipe; "tiny-verbose" held recipe 2 (Pattern I only)
_RECIPE_VERSION = 4  # bump when targets, model shape, problem mix or training change, so stale caches rebuild
_STAMP = ".openrlhf_darts_sft.json"
SFT_SEED_OFFSET = 10_000  # SFT problems use seeds far from the RL prompts' seeds
# Fine-tuning steps of a mix when not given (1,500 else): counting is learned between 1,500 steps (counted answers
# right 0.20, at once 0.05) and 3,000 (0.93 and 0.63); benchmarks/count_probe/.
SFT_STEPS = {"copy_count": 3000}

# --- problems: named mixes of levels, each level tagged with its pattern ------------------------------------------

# Levels: "copy", "one_op" and "chain" are `make_problems(max_ops=0, 1, 3)`; "lookup" is `make_lookup_problems()`.
# Share of problems at each level, per named mix.
DIFFICULTIES: dict[str, dict[str, float]] = {
    "two_pattern": {"copy": 0.35, "one_op": 0.15, "lookup": 0.5},
    "easy": {"copy": 0.7, "one_op": 0.3},
    "copy": {"copy": 1.0},
    "one_op": {"one_op": 1.0},
    "chain": {"chain": 1.0},
    "lookup": {"lookup": 1.0},
    "count": {"count": 1.0},
    "copy_count": {"copy": 0.5, "count": 0.5},
}
DEFAULT_DIFFICULTY = "two_pattern"
# DARTS_SPEC.md §1: Pattern I, length is ineffective verbosity (the targets add self-checks that change nothing);
# Pattern II, length is effective depth (a lookup answered hop by hop is longer and, for this model, more often right).
# "count" asks the one-step problems of "one_op" and answers them by counting (`count_target`): Pattern II.
LEVEL_PATTERN = {"copy": "I", "one_op": "I", "chain": "I", "lookup": "II", "count": "II"}
_MAX_OPS = {"copy": 0, "one_op": 1, "count": 1, "chain": 3}


def _level_problems(level: str, num: int, seed: int) -> list[dict[str, str]]:
    if level == "lookup":
        return make_lookup_problems(num, seed)
    return make_problems(num, seed, max_ops=_MAX_OPS[level])


def mixed_problems(num: int, seed: int, difficulty: str = DEFAULT_DIFFICULTY) -> list[dict[str, str]]:
    """``num`` problems in the `DIFFICULTIES` mix named ``difficulty``, deterministic in ``seed``, each tagged with its
    ``pattern`` ("I" or "II", `LEVEL_PATTERN`); `mixed_levels` draws them."""
    return [{**problem, "pattern": LEVEL_PATTERN[level]} for level, problem in mixed_levels(num, seed, difficulty)]


def mixed_levels(num: int, seed: int, difficulty: str = DEFAULT_DIFFICULTY) -> list[tuple[str, dict[str, str]]]:
    """``num`` (level, problem) pairs in the `DIFFICULTIES` mix named ``difficulty``, deterministic in ``seed``.

    Each problem's level is drawn from the mix; a level's problems come from its generator seeded with
    ``seed * 10 + _SEED_SLOTS[level]``, in order, so two seeds never share a level's stream.
    """
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty={difficulty!r} is unknown; choose one of {sorted(DIFFICULTIES)}")
    rng = random.Random(seed)
    levels, weights = zip(*DIFFICULTIES[difficulty].items())
    drawn = rng.choices(levels, weights=weights, k=num)
    pools = {k: iter(_level_problems(k, drawn.count(k), seed * 10 + _SEED_SLOTS[k])) for k in set(drawn)}
    return [(k, next(pools[k])) for k in drawn]


# The first three keep the seeds of recipe 2.
_SEED_SLOTS = {"copy": 0, "one_op": 1, "chain": 3, "lookup": 5, "count": 7}


# --- targets: reasoning of random length -------------------------------------------------------------------------

_START = re.compile(r"^(\w+) has (\d+) (\w+)\.$")
_FIND = re.compile(r"^Then \w+ finds (\d+) more \w+\.$")
_GIVE = re.compile(r"^Then \w+ gives (\d+) \w+ to a friend\.$")
_SCALE = re.compile(r"^Then \w+ (doubles|triples|quadruples) the number of \w+\.$")
_SPLIT = re.compile(r"^Then \w+ splits the \w+ equally into (\d+) groups and keeps one group\.$")
_BUY = re.compile(r"^Then \w+ buys (\d+) \w+ with (\d+) \w+ in each\.$")
_FACTORS = {"doubles": 2, "triples": 3, "quadruples": 4}
_FILLERS = ("Wait, let me read the question again.", "So far so good.", "I will go over each step once more.")


def solution_steps(prompt: str, answer: str) -> tuple[str, list[str]]:
    """The opening clause and the equations that solve a `bench.tasks` problem, checked against its label.

    Raises ValueError when a sentence matches no known template or the chain misses the label: the task generator
    changed, and these targets must follow it.
    """
    sentences = re.findall(r"[^.?]+[.?]", prompt)
    start = _START.match(sentences[0].strip())
    if start is None:
        raise ValueError(f"problem {prompt!r} does not open with '<name> has <n> <items>.'; update local/sft.py")
    value, item = int(start.group(2)), start.group(3)
    equations = []
    for sentence in (s.strip() for s in sentences[1:]):
        if not sentence.startswith("Then "):
            continue
        if m := _FIND.match(sentence):
            new = value + int(m.group(1))
            equations.append(f"{value} + {m.group(1)} = {new}.")
        elif m := _GIVE.match(sentence):
            new = value - int(m.group(1))
            equations.append(f"{value} - {m.group(1)} = {new}.")
        elif m := _SCALE.match(sentence):
            factor = _FACTORS[m.group(1)]
            new = value * factor
            equations.append(f"{value} * {factor} = {new}.")
        elif m := _SPLIT.match(sentence):
            new = value // int(m.group(1))
            equations.append(f"{value} / {m.group(1)} = {new}.")
        elif m := _BUY.match(sentence):
            boxes, per_box = int(m.group(1)), int(m.group(2))
            extra = boxes * per_box
            new = value + extra
            equations += [f"{boxes} * {per_box} = {extra}.", f"{value} + {extra} = {new}."]
        else:
            raise ValueError(f"sentence {sentence!r} of problem {prompt!r} matches no template; update local/sft.py")
        value = new
    if str(value) != answer:
        raise ValueError(f"solving {prompt!r} gave {value}, but its label is {answer}; update local/sft.py")
    return f"Start with {start.group(2)} {item}.", equations


def num_checks(rng: random.Random) -> int:
    """Self-check sentences in one target: heavy-tailed, so a prompt's sampled answers span short to very long."""
    draw = rng.random()
    if draw < 0.5:
        return rng.randint(0, 1)
    if draw < 0.85:
        return rng.randint(2, 5)
    return rng.randint(6, 14)


def verbose_target(prompt: str, answer: str, rng: random.Random) -> str:
    """One supervised answer: the solution, a random number of checks and fillers, then 'Answer: N' on its own line."""
    opening, equations = solution_steps(prompt, answer)
    checkable = equations or [f"the count is {answer}."]  # a copy problem has no equation; its checks restate N
    checks = []
    for _ in range(num_checks(rng)):
        if rng.random() < 0.75:
            checks.append(f"Let me check: {rng.choice(checkable)[:-1]}. Yes.")
        else:
            checks.append(rng.choice(_FILLERS))
    return " ".join([opening, *equations, *checks]) + f"\nAnswer: {answer}"


_REF = re.compile(r"^([A-Z]) = ([A-Z])\.$")
_VALUE = re.compile(r"^([A-Z]) = (\d+)\.$")
_ASK = re.compile(r"^What is ([A-Z])\?$")
STEP_BY_STEP_SHARE = 0.5  # lookup targets written hop by hop; the rest state the value at once


def lookup_hops(prompt: str, answer: str) -> tuple[list[str], str]:
    """The sentences that answer a `make_lookup_problems` prompt, from the asked variable back to its value, and the
    shortcut answer sentence ("D = 17."), checked against the label.
    """
    sentences = [s.strip() for s in re.findall(r"[^.?]+[.?]", prompt)]
    refs, values, asked = {}, {}, None
    for sentence in sentences:
        if m := _REF.match(sentence):
            refs[m.group(1)] = sentence, m.group(2)
        elif m := _VALUE.match(sentence):
            values[m.group(1)] = sentence, m.group(2)
        elif m := _ASK.match(sentence):
            asked = m.group(1)
    if asked is None:
        raise ValueError(f"lookup problem {prompt!r} asks no 'What is <variable>?'; update local/sft.py")
    hops, name = [], asked
    while name in refs:
        sentence, name = refs[name]
        hops.append(sentence)
        if len(hops) > len(sentences):
            raise ValueError(f"lookup problem {prompt!r} has a reference cycle; update local/sft.py")
    if name not in values or values[name][1] != answer:
        raise ValueError(f"following {prompt!r} does not reach its label {answer}; update local/sft.py")
    hops.append(values[name][0])
    return hops, f"{asked} = {answer}."


def lookup_target(prompt: str, answer: str, rng: random.Random) -> str:
    """A lookup answer: every hop copied from the prompt (share `STEP_BY_STEP_SHARE`), or the value stated at once."""
    hops, shortcut = lookup_hops(prompt, answer)
    body = " ".join(hops) if rng.random() < STEP_BY_STEP_SHARE else shortcut
    return f"{body}\nAnswer: {answer}"


_ONE_STEP = re.compile(r"^(\d+) ([+-]) (\d+) = (\d+)\.$")


def count_steps(prompt: str, answer: str) -> tuple[str, str, str]:
    """The opening clause of a one-step problem (`make_problems(max_ops=1)`), its answer counted one at a time with
    the steps left ("47 + 3: 48 2, 49 1, 50 0."), and the same stated at once ("47 + 3 = 50."), checked against the
    label by `solution_steps`.

    Counting needs only the number just written and a successor (or predecessor) of it, a local rule; stating the sum
    at once needs the whole addition table in one forward pass.
    """
    opening, equations = solution_steps(prompt, answer)
    step = _ONE_STEP.match(equations[0]) if len(equations) == 1 else None
    if step is None:
        raise ValueError(f"problem {prompt!r} is not a one-step addition or subtraction; count_steps needs max_ops=1")
    start, sign, amount = int(step.group(1)), 1 if step.group(2) == "+" else -1, int(step.group(3))
    counted = ", ".join(f"{start + sign * k} {amount - k}" for k in range(1, amount + 1))
    return opening, f"{start} {step.group(2)} {amount}: {counted}.", equations[0]


def count_target(prompt: str, answer: str, rng: random.Random) -> str:
    """A "count" answer: the opening, then the result counted one at a time (share `STEP_BY_STEP_SHARE`) or stated at
    once, then 'Answer: N'."""
    opening, counted, at_once = count_steps(prompt, answer)
    body = counted if rng.random() < STEP_BY_STEP_SHARE else at_once
    return f"{opening} {body}\nAnswer: {answer}"


_TARGETS = {"lookup": lookup_target, "count": count_target}  # the other levels: verbose_target


def sft_target(level: str, problem: dict[str, str], rng: random.Random) -> str:
    """The supervised answer of a `mixed_levels` problem of `level`."""
    return _TARGETS.get(level, verbose_target)(problem["prompt"], problem["answer"], rng)


# --- model and training ---------------------------------------------------------------------------------------------

MODEL_SHAPE = dict(
    hidden_size=96,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=3,  # head size 32: supported by vLLM's CPU attention
    num_key_value_heads=1,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
)


def _encode(tokenizer, prompt: str, target: str) -> tuple[list[int], int]:
    """Token ids of chat prompt + target + EOS, and the prompt's length (positions before it carry no loss)."""
    messages = [{"role": "user", "content": prompt}]
    prefix = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + target_ids, len(prompt_ids)


def train_verbose_model(
    out_dir: str | os.PathLike,
    steps: int = 1500,
    batch_size: int = 16,
    seed: int = 0,
    lr: float = 3e-3,
    difficulty: str = DEFAULT_DIFFICULTY,
) -> dict:
    """Fine-tune a fresh tiny-verbose model for `steps` AdamW steps and save it to `out_dir`; returns a summary.

    Deterministic for a given seed (fixed step count, not a time budget); progress is shown with tqdm.
    """
    import torch

    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps={steps}, batch_size={batch_size}: both must be >= 1")
    # One thread: at this model size a second thread buys little on an idle machine and, on a busy one, spinning
    # threads made each step 5x slower (0.4 vs 2.2 steps/s at a load average of 12 on 2 cores).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(out_dir, steps, batch_size, seed, lr, difficulty)
    finally:
        torch.set_num_threads(threads)


def _train(out_dir, steps: int, batch_size: int, seed: int, lr: float, difficulty: str) -> dict:
    import torch
    from tqdm import tqdm
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("tiny"))
    problems = mixed_levels(steps * batch_size, SFT_SEED_OFFSET + seed, difficulty)
    examples = [_encode(tokenizer, p["prompt"], sft_target(level, p, rng)) for level, p in problems]
    # Batches of similar lengths, in random order: heavy-tailed targets padded to their batch's longest were half
    # padding, and this halves the step time on CPU.
    examples.sort(key=lambda example: len(example[0]))
    batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    rng.shuffle(batches)

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
        **MODEL_SHAPE,
    )
    model = Qwen2ForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)

    def lr_factor(step: int) -> float:
        """Linear warmup, then cosine decay to 10% of lr."""
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    model.train()
    start, cpu_start, losses = time.perf_counter(), time.process_time(), []
    bar = tqdm(batches, desc="SFT tiny-verbose", unit="step")
    for batch in bar:
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)  # (B, T)
        labels = torch.full((len(batch), width), -100)  # (B, T): -100 outside the response
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
        for row, (ids, prompt_len) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
            attention_mask[row, : len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return {
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "difficulty": difficulty,
        "final_loss": sum(losses[-10:]) / len(losses[-10:]),
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,  # all threads: on an idle machine, wall ~ this / cores
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def model_dir_name(difficulty: str = DEFAULT_DIFFICULTY) -> str:
    """The cache folder of the SFT policy of mix `difficulty`: `DIR_NAME` for the two-pattern default,
    ``tiny-verbose-<difficulty>`` for another `DIFFICULTIES` mix (e.g. ``tiny-verbose-easy``, Pattern I only)."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty={difficulty!r} is unknown; choose one of {sorted(DIFFICULTIES)}")
    return DIR_NAME if difficulty == DEFAULT_DIFFICULTY else f"tiny-verbose-{difficulty}"


def ensure_verbose_model(
    cache_dir: str | os.PathLike | None = None,
    steps: int | None = None,
    seed: int = 0,
    difficulty: str = DEFAULT_DIFFICULTY,
) -> str:
    """The cached tiny-verbose model folder of mix `difficulty` (`model_dir_name`), trained first when missing or
    built by another recipe; `steps` defaults to the mix's `SFT_STEPS`."""
    steps = SFT_STEPS.get(difficulty, 1500) if steps is None else steps
    folder = Path(cache_dir or default_cache_dir()) / model_dir_name(difficulty)
    wanted = {"recipe": _RECIPE_VERSION, "steps": steps, "seed": seed, "difficulty": difficulty}
    stamp = folder / _STAMP
    if stamp.is_file():
        found = json.loads(stamp.read_text())
        if {k: found.get(k) for k in wanted} == wanted:
            return str(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Train into a temporary sibling and rename, so an interrupted build never leaves a half-written cache.
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        summary = train_verbose_model(tmp, steps=steps, seed=seed, difficulty=difficulty)
        (tmp / _STAMP).write_text(json.dumps({**wanted, **summary}, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    logger.info("tiny-verbose model ready in %s: %s", folder, summary)
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="AdamW steps of 16 examples (default: SFT_STEPS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache_dir", default=None, help="default: $OPENRLHF_DARTS_CACHE or ~/.cache/openrlhf_darts")
    args = parser.parse_args()
    path = ensure_verbose_model(args.cache_dir, steps=args.steps, seed=args.seed)
    print(path)
    print((Path(path) / _STAMP).read_text())


if __name__ == "__main__":
    main()
