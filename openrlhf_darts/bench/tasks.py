"""Built-in arithmetic word problems with an exact-answer reward, for benchmarks and local training without datasets.

Why: our machines reach no dataset hub, and a rollout benchmark needs prompts whose answers (a) have a checkable label
and (b) invite reasoning of varying length. Problems chain one to three operations on small integers, so the labels are
exact integers and longer chains invite longer answers.

Public pieces:
- ``make_problems(num, seed, max_ops=3)`` -> ``[{"prompt": str, "answer": str}, ...]``; the prompt is plain text
  (render it through a chat template yourself), the answer an integer as a string. Same seed, same problems.
  ``max_ops`` sets the difficulty: 0 gives "copy" problems (the answer is the number the prompt states), 1 one small
  addition or subtraction, 2 or more chains of one to ``max_ops`` operations of every kind (the default, 3, is the
  original task). Easier levels exist for policies too small to solve chains, such as the local demo's tiny model.
- ``make_lookup_problems(num, seed, hops=(2, 3))`` -> the same dicts: multi-hop lookups with distractors ("A = 17.
  C = 23. B = A. D = B. E = C. What is D?"), where the answer is the value at the end of a chain of ``hops``
  references and the prompt states other values too. Writing each hop is a copy from the prompt; stating the
  answer at once means resolving every hop in one go (the two-pattern task's depth pattern, ``local.sft``).
- ``extract_answer(text)`` -> the final answer a response states, normalised (``"1,200"`` -> ``"1200"``), or None.
- ``reward_func(queries, prompts, labels)``: OpenRLHF's ``--reward.remote_url file.py`` contract. ``queries`` are the
  decoded prompt + response, ``labels`` the answers; returns ``{"rewards", "scores", "extra_logs"}`` with tensors of
  shape (B,), as upstream's example reward function does. Reward 1.0 for an exact answer, else 0.0.

Task selection, the one API benchmarks and the local mode use to offer ``--task`` (default ``builtin``):
- ``TASK_FLAG_HELP``, ``check_task(name)``: ``builtin`` (these problems) or a reasoning-gym dataset name
  (``gsm_symbolic``, ``basic_arithmetic``, ``chain_sum``, ...; ``bench.gym_tasks``); anything else is a ValueError.
- ``task_problems(task, count, seed)`` -> ``[{"messages": chat messages, "label": str}, ...]``: render the messages
  through the model's chat template (or write them as the ``prompt`` field of an OpenRLHF prompt file used with
  ``--data.apply_chat_template``) and pass the label as the sample's label.
- ``reward_file(task)``: the file for ``--reward.remote_url`` (its ``reward_func`` scores that task's labels).
- ``read_prompt_file(path, flag)``: the checked rows of a JSONL prompt file, the benchmarks' alternative to a task.

Standard library only at import (torch is imported inside ``reward_func``, which runs where torch is loaded anyway).
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

from openrlhf_darts.bench.responses import response_part

__all__ = [
    "ANSWER_INSTRUCTION", "BUILTIN", "TASK_FLAG_HELP", "check_task", "extract_answer", "make_lookup_problems", "make_problems",
    "response_part", "reward_file", "reward_func", "task_problems",
]  # fmt: skip

ANSWER_INSTRUCTION = "Think step by step, then give the final answer on the last line as 'Answer: <number>'."

_NAMES = ("Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Iris", "Jack", "Lena", "Omar", "Rosa", "Sam")
_ITEMS = ("apples", "marbles", "books", "stickers", "coins", "pencils", "cookies", "stamps", "shells", "cards")
_CONTAINERS = ("boxes", "bags", "jars", "packs", "baskets")


def _start(rng: random.Random, name: str, item: str) -> tuple[str, int]:
    value = rng.randint(5, 60)
    return f"{name} has {value} {item}.", value


def _step(rng: random.Random, value: int, name: str, item: str) -> tuple[str, int]:
    """One more operation on the running total; keeps the total a positive integer."""
    kind = rng.choice(("add", "sub", "mul", "div", "buy_boxes"))
    if kind == "add":
        b = rng.randint(2, 40)
        return f"Then {name} finds {b} more {item}.", value + b
    if kind == "sub" and value > 2:
        b = rng.randint(1, value - 1)
        return f"Then {name} gives {b} {item} to a friend.", value - b
    if kind == "mul" and value <= 200:
        k = rng.randint(2, 4)
        word = {2: "doubles", 3: "triples", 4: "quadruples"}[k]
        return f"Then {name} {word} the number of {item}.", value * k
    if kind == "div":
        divisors = [d for d in (2, 3, 4, 5) if value % d == 0]
        if divisors:
            d = rng.choice(divisors)
            return f"Then {name} splits the {item} equally into {d} groups and keeps one group.", value // d
    boxes, per_box = rng.randint(2, 6), rng.randint(2, 12)
    container = rng.choice(_CONTAINERS)
    return f"Then {name} buys {boxes} {container} with {per_box} {item} in each.", value + boxes * per_box


def _small_step(rng: random.Random, value: int, name: str, item: str) -> tuple[str, int]:
    """One addition or subtraction of a one-digit number, in `_step`'s wording (the easy level's only operation)."""
    if rng.random() < 0.5:
        b = rng.randint(2, 9)
        return f"Then {name} finds {b} more {item}.", value + b
    b = rng.randint(1, min(9, value - 1))
    return f"Then {name} gives {b} {item} to a friend.", value - b


def make_problems(num: int, seed: int = 0, max_ops: int = 3) -> list[dict[str, str]]:
    """``num`` word problems of up to ``max_ops`` operations, deterministic in ``seed`` (and ``max_ops``).

    ``max_ops=0``: copy problems ("Ava has 17 apples. How many apples does Ava have?"); ``max_ops=1``: one addition or
    subtraction of a one-digit number; ``max_ops>=2``: one to ``max_ops`` operations of every kind. The default, 3,
    draws exactly the problems this function drew before ``max_ops`` existed.
    Each item is ``{"prompt": text ending with ANSWER_INSTRUCTION, "answer": integer as str}``.
    """
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num={num!r} is not a positive int; ask for at least one problem")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed={seed!r} is not an int; pass an integer seed")
    if isinstance(max_ops, bool) or not isinstance(max_ops, int) or max_ops < 0:
        raise ValueError(f"max_ops={max_ops!r} is not an int >= 0; pass 0 (copy), 1 (one small step) or 2+ (chains)")
    rng = random.Random(seed)
    problems = []
    for _ in range(num):
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        sentence, value = _start(rng, name, item)
        sentences = [sentence]
        if max_ops == 0:
            sentences.append(f"How many {item} does {name} have?")
            problems.append({"prompt": " ".join(sentences) + " " + ANSWER_INSTRUCTION, "answer": str(value)})
            continue
        if max_ops == 1:
            sentence, value = _small_step(rng, value, name, item)
            sentences.append(sentence)
        else:
            for _ in range(rng.randint(1, max_ops)):
                sentence, value = _step(rng, value, name, item)
                sentences.append(sentence)
        sentences.append(f"How many {item} does {name} have now?")
        problems.append({"prompt": " ".join(sentences) + " " + ANSWER_INSTRUCTION, "answer": str(value)})
    return problems


_VARIABLES = tuple("ABCDEFGHJKLMNPQRSTUVWXYZ")  # one token each in the tiny models' tokenizer


def make_lookup_problems(
    num: int, seed: int = 0, hops: tuple[int, ...] = (2, 3), distractor_counts: int = 2, distractor_refs: int = 1
) -> list[dict[str, str]]:
    """``num`` multi-hop lookup problems, deterministic in ``seed`` and the sizes.

    Each problem states ``1 + distractor_counts`` values ("A = 17.", all different), a chain of ``h`` references from
    the asked variable back to one of them ("D = B. B = A."), with ``h`` drawn from ``hops``, and ``distractor_refs``
    references to the other values; the sentences come in random order, then the question ("What is D?") and
    ``ANSWER_INSTRUCTION``. Every variable is defined once, so the chain is unique. A reader who follows the references
    one at a time copies each hop from the prompt; one who states a number at once picks one of the
    ``1 + distractor_counts`` values. Variables are single capital letters: one token each for the tiny models, whose
    tokenizer spells most names letter by letter, so a hop is a short copy rather than a long-range match.
    """
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num={num!r} is not a positive int; ask for at least one problem")
    if not hops or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hops):
        raise ValueError(f"hops={hops!r} must be a non-empty tuple of ints >= 1 (references from the asked variable)")
    if distractor_counts < 0 or distractor_refs < 0 or (distractor_refs and not distractor_counts):
        raise ValueError(
            f"distractor_counts={distractor_counts}, distractor_refs={distractor_refs}: both must be >= 0, and "
            "distractor references need a distractor value to point at"
        )
    names_needed = max(hops) + 1 + distractor_counts + distractor_refs
    if names_needed > len(_VARIABLES):
        raise ValueError(f"a problem needs {names_needed} variables but only {len(_VARIABLES)} exist; use fewer hops")
    rng = random.Random(seed)
    problems = []
    for _ in range(num):
        depth = rng.choice(hops)
        names = rng.sample(_VARIABLES, depth + 1 + distractor_counts + distractor_refs)
        values = rng.sample(range(5, 61), 1 + distractor_counts)
        chain, others = names[: depth + 1], names[depth + 1 :]
        sentences = [f"{chain[0]} = {values[0]}."]
        sentences += [f"{chain[i]} = {chain[i - 1]}." for i in range(1, depth + 1)]
        roots = others[:distractor_counts]
        sentences += [f"{name} = {value}." for name, value in zip(roots, values[1:])]
        sentences += [f"{name} = {rng.choice(roots)}." for name in others[distractor_counts:]]
        rng.shuffle(sentences)
        question = f"What is {chain[-1]}?"
        problems.append({"prompt": " ".join([*sentences, question, ANSWER_INSTRUCTION]), "answer": str(values[0])})
    return problems


_NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
# Most explicit first: a boxed answer, GSM8K's "####", "Answer: N", "the answer is N"; else the last number.
_PATTERNS = (
    re.compile(r"\\boxed\{\s*(" + _NUMBER + r")\s*\}"),
    re.compile(r"####\s*(" + _NUMBER + ")"),
    re.compile(r"answer\s*(?:is|:)?\s*[:=]?\s*\**\s*\$?(" + _NUMBER + ")", re.IGNORECASE),
)
_ANY_NUMBER = re.compile(_NUMBER)


def _normalize(number: str) -> str:
    number = number.replace(",", "")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return "0" if number in ("-0", "") else number


def extract_answer(text: str) -> str | None:
    """The final answer a response states, normalised (commas dropped, ``"12.0"`` -> ``"12"``); None without a number.

    The last match of the most explicit pattern wins: ``\\boxed{N}``, then ``#### N``, then ``Answer: N`` / ``the
    answer is N``, then the last number anywhere in the text.
    """
    if not isinstance(text, str):
        raise TypeError(f"text={text!r} has type {type(text).__name__}; expected the response as a str")
    for pattern in _PATTERNS:
        matches = pattern.findall(text)
        if matches:
            return _normalize(matches[-1])
    numbers = _ANY_NUMBER.findall(text)
    return _normalize(numbers[-1]) if numbers else None


def reward_func(queries: list[str], prompts: list[str], labels: list[str]) -> dict:
    """Exact-answer reward in OpenRLHF's ``reward_func`` format: 1.0 when ``extract_answer`` equals the label."""
    import torch

    if not (len(queries) == len(prompts) == len(labels)):
        raise ValueError(
            f"got {len(queries)} queries, {len(prompts)} prompts and {len(labels)} labels; "
            "expected one of each per sample"
        )
    rewards, answered = [], []
    for query, prompt, label in zip(queries, prompts, labels):
        answer = extract_answer(response_part(query, prompt))
        rewards.append(float(answer is not None and answer == _normalize(str(label).strip())))
        answered.append(float(answer is not None))
    rewards_t = torch.tensor(rewards, dtype=torch.float32)  # (B,)
    return {
        "rewards": rewards_t,
        "scores": rewards_t,
        "extra_logs": {"answered": torch.tensor(answered, dtype=torch.float32)},  # (B,)
    }


# ---- task selection ----------------------------------------------------------------------------------------------
BUILTIN = "builtin"
TASK_FLAG_HELP = (
    f"{BUILTIN} (the built-in arithmetic word problems, exact-answer reward) or a reasoning-gym dataset name such as "
    "gsm_symbolic, basic_arithmetic, chain_sum (its own scorer as the reward)"
)


def check_task(task: str) -> str:
    """``task`` if it names a task (``builtin`` or a registered reasoning-gym dataset); ValueError otherwise."""
    if task == BUILTIN:
        return task
    from openrlhf_darts.bench import gym_tasks

    names = gym_tasks.dataset_names()
    if task not in names:
        raise ValueError(f"--task={task!r} is not a task; pass {BUILTIN} or a reasoning-gym dataset name: {names}")
    return task


def task_problems(task: str, count: int, seed: int) -> list[dict]:
    """``count`` problems of ``task``, deterministic in ``seed``: ``[{"messages", "label"}, ...]`` (module doc).

    ``builtin`` is ``make_problems(count, seed)`` (the default difficulty) as one user message, labelled by its answer.
    """
    check_task(task)
    if task == BUILTIN:
        return [
            {"messages": [{"role": "user", "content": p["prompt"]}], "label": p["answer"]}
            for p in make_problems(count, seed)
        ]
    from openrlhf_darts.bench import gym_tasks

    return [{"messages": p["messages"], "label": p["label"]} for p in gym_tasks.make_problems(task, count, seed)]


def reward_file(task: str) -> str:
    """Absolute path of the ``reward_func`` file that scores ``task``'s labels (for ``--reward.remote_url``)."""
    check_task(task)
    name = "tasks.py" if task == BUILTIN else "gym_tasks.py"
    return str(Path(__file__).resolve().parent / name)


def read_prompt_file(path: str | os.PathLike, flag: str) -> list[tuple[int, dict]]:
    """`(line number, object)` per non-blank line of a JSONL prompt file given by option `flag`, each object with a
    string ``prompt``; the caller checks its own further keys. ValueError naming the option, file and line otherwise,
    or when the file holds no prompt. (The prompt files of ``bench.rollout --prompts`` and ``bench.dynamics
    --train-prompts / --eval-prompts``.)"""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{flag} {path}:{number} is not JSON ({error}); one object per line") from error
            if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
                raise ValueError(f"{flag} {path}:{number} has no string 'prompt' field; got {line.strip()[:80]!r}")
            rows.append((number, item))
    if not rows:
        raise ValueError(f"{flag} {path} holds no prompt; expected one JSON object with a 'prompt' field per line")
    return rows
