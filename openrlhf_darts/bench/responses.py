"""The response part of a reward function's query, shared by the reward files ``tasks.py`` and ``gym_tasks.py``
(standard library only; its own module so that neither reward file imports the other back)."""

from __future__ import annotations


def response_part(query: str, prompt: str) -> str:
    """The response inside ``query`` (= decoded prompt + response); the prompt's numbers must not count as answers."""
    if query.startswith(prompt):
        return query[len(prompt) :]
    # Decoding may not reproduce the prompt byte for byte (special tokens, spaces); cut at the common prefix instead.
    common = 0
    for a, b in zip(query, prompt):
        if a != b:
            break
        common += 1
    return query[common:]
