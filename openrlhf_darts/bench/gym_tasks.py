"""reasoning-gym problems with reasoning-gym's own answer scorer as the reward, offline and deterministic in the seed.

Why: our built-in word problems (``bench.tasks``) are hand-written; reasoning-gym (PyPI ``reasoning-gym``, pinned to
``REASONING_GYM_VERSION`` in requirements-cpu.txt and requirements-gpu.txt) ships procedural generators users know
(``gsm_symbolic``, ``basic_arithmetic``, ``chain_sum``, ...), each with a scorer, and needs no network.

Three public pieces (``bench.tasks`` exposes them under the task names; call them through it):
- ``make_problems(name, count, seed)`` -> ``[{"messages", "label", "answer"}, ...]``: the chat messages are
  reasoning-gym's "default" system prompt (think step by step, answer inside ``<answer></answer>``) and the question;
  the label is a JSON string naming the entry (dataset, seed, size, index, answer), because a scorer needs the whole
  entry (answer and metadata) and OpenRLHF passes only a label string to the reward function.
- ``reward_func(queries, prompts, labels)``: OpenRLHF's ``--reward.remote_url file.py`` contract (this file is that
  file). The entry is regenerated from its label; the answer is the response's last ``<answer>...</answer>``
  (reasoning-gym's ``extract_answer``) and the reward is the dataset's ``score_answer`` (for ``gsm_symbolic``: 1.0
  for the right number, 0.01 for another number, 0.0 without one). ``extra_logs``: ``answered`` (an answer tag was
  found) and ``accuracy`` (the score is 1.0).
- ``dataset_names()``: every dataset the installed reasoning-gym registers.

A label whose regenerated entry has another answer than the one it recorded (a different reasoning-gym version, another
dataset config) raises ValueError: the reward would otherwise score against the wrong problem. reasoning-gym is
imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json

__all__ = ["REASONING_GYM_VERSION", "dataset_names", "make_problems", "reward_func"]

REASONING_GYM_VERSION = "0.1.25"
SYSTEM_PROMPT_NAME = "default"  # reasoning_gym.utils.SYSTEM_PROMPTS key: step by step, answer in <answer> tags
_LABEL_KEYS = ("reasoning_gym", "seed", "size", "index", "answer")


def _reasoning_gym():
    """The installed reasoning_gym module, after checking it is the pinned version (problems depend on it)."""
    try:
        found = importlib.metadata.version("reasoning-gym")
    except importlib.metadata.PackageNotFoundError as e:
        raise RuntimeError(
            f"reasoning-gym is not installed; pip install reasoning-gym=={REASONING_GYM_VERSION} (requirements-*.txt)"
        ) from e
    if found != REASONING_GYM_VERSION:
        raise RuntimeError(
            f"reasoning-gym=={found} is installed, but problems and labels are pinned to {REASONING_GYM_VERSION}; "
            f"pip install reasoning-gym=={REASONING_GYM_VERSION}"
        )
    import reasoning_gym

    return reasoning_gym


def dataset_names() -> list[str]:
    """The dataset names the installed reasoning-gym registers, sorted."""
    _reasoning_gym()
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


@functools.lru_cache(maxsize=64)
def _dataset(name: str, seed: int, size: int):
    # Entries depend on (seed, size): gsm_symbolic, for one, draws its templates for all `size` entries from the seed.
    return _reasoning_gym().create_dataset(name, seed=seed, size=size)


def make_problems(name: str, count: int, seed: int) -> list[dict]:
    """``count`` problems of reasoning-gym dataset ``name`` (default config), deterministic in ``seed``.

    Each item: ``{"messages": [system, user] chat messages, "label": JSON string for reward_func, "answer": str}``.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count={count!r} is not a positive int; ask for at least one problem")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} is not an int >= 0; pass a non-negative integer seed")
    names = dataset_names()
    if name not in names:
        raise ValueError(f"{name!r} is not a reasoning-gym dataset; choose one of {names}")
    from reasoning_gym.utils import SYSTEM_PROMPTS

    dataset = _dataset(name, seed, count)
    problems = []
    for index in range(count):
        entry = dataset[index]
        label = {"reasoning_gym": name, "seed": seed, "size": count, "index": index, "answer": str(entry["answer"])}
        messages = [
            {"role": "system", "content": SYSTEM_PROMPTS[SYSTEM_PROMPT_NAME]},
            {"role": "user", "content": entry["question"]},
        ]
        problems.append({"messages": messages, "label": json.dumps(label), "answer": str(entry["answer"])})
    return problems


def _entry(label: str):
    """(dataset, entry) a label names, regenerated; ValueError for a label this module did not write."""
    try:
        fields = json.loads(label)
    except (TypeError, json.JSONDecodeError):
        fields = None
    if not isinstance(fields, dict) or sorted(fields) != sorted(_LABEL_KEYS):
        raise ValueError(
            f"label {label!r} is not a reasoning-gym label (a JSON object with the keys {list(_LABEL_KEYS)}); "
            "build the prompts with bench.tasks.task_problems"
        )
    dataset = _dataset(fields["reasoning_gym"], fields["seed"], fields["size"])
    entry = dataset[fields["index"]]
    if str(entry["answer"]) != fields["answer"]:
        raise ValueError(
            f"label {label!r} regenerates an entry with answer {entry['answer']!r}; the prompts were made with "
            f"another reasoning-gym version or config than {REASONING_GYM_VERSION}: regenerate the prompt file"
        )
    return dataset, entry


def reward_func(queries: list[str], prompts: list[str], labels: list[str]) -> dict:
    """reasoning-gym's scorer in OpenRLHF's ``reward_func`` format; tensors of shape (B,)."""
    import torch
    from reasoning_gym.utils import extract_answer

    from openrlhf_darts.bench.responses import response_part

    if not (len(queries) == len(prompts) == len(labels)):
        raise ValueError(
            f"got {len(queries)} queries, {len(prompts)} prompts and {len(labels)} labels; "
            "expected one of each per sample"
        )
    scores, answered = [], []
    for query, prompt, label in zip(queries, prompts, labels):
        dataset, entry = _entry(label)
        answer = extract_answer(response_part(query, prompt))
        scores.append(float(dataset.score_answer(answer, entry)))
        answered.append(float(answer is not None))
    scores_t = torch.tensor(scores, dtype=torch.float32)  # (B,)
    return {
        "rewards": scores_t,
        "scores": scores_t,
        "extra_logs": {
            "answered": torch.tensor(answered, dtype=torch.float32),  # (B,)
            "accuracy": (scores_t == 1.0).float(),  # (B,)
        },
    }
