"""Rule-based math reward for DAPO-Math-17k-style data: +1 for a correct final answer, -1 otherwise (DAPO).

Loaded by OpenRLHF's `SingleTurnAgentExecutor` inside each engine actor via `--reward.remote_url <this file>`; it is
called once per sample with the decoded prompt+response (`queries`), the prompt and the label (the reference answer).
The final answer is the last `Answer: ...` line of the response (DAPO-Math-17k's instruction), else the last
`\\boxed{...}` (Qwen2.5-Math's habit). Answers compare after light normalization (spaces, `$`, a trailing period,
`\\text{}`/`\\left`/`\\right`, and numeric equality). Baseline and DARTS runs load the same file, so rewards agree.
"""

from __future__ import annotations

import re

_ANSWER_LINE = re.compile(r"Answer\s*:\s*(.+)", re.IGNORECASE)


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for position in range(begin - 1, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:position]
    return None


def extract_answer(response: str) -> str | None:
    """The response's final answer: its last `Answer:` line, else its last \\boxed{}; None when it gives none."""
    lines = _ANSWER_LINE.findall(response)
    if lines:
        return lines[-1]
    return _last_boxed(response)


def normalize(answer: str) -> str:
    answer = answer.strip()
    boxed = _last_boxed(answer)
    if boxed is not None:
        answer = boxed
    answer = re.sub(r"\\text\{(.*?)\}", r"\1", answer)
    for token in ("\\left", "\\right", "$", " ", "\\!", "\\,"):
        answer = answer.replace(token, "")
    answer = answer.rstrip(".")
    try:
        number = float(answer.replace(",", ""))
    except ValueError:
        return answer
    return repr(int(number)) if number.is_integer() else repr(number)


def reward_func(queries: list[str], prompts: list[str], labels: list[str]) -> dict:
    """OpenRLHF's reward-function contract; its executor calls it with one sample at a time."""
    if not len(queries) == len(prompts) == len(labels) == 1:
        raise ValueError(f"reward_func got {len(queries)} queries; OpenRLHF's executor sends exactly one per call")
    query, prompt, label = queries[0], prompts[0], labels[0]
    response = query[len(prompt) :] if query.startswith(prompt) else query
    answer = extract_answer(response)
    correct = answer is not None and normalize(answer) == normalize(str(label))
    reward = 1.0 if correct else -1.0
    return {"rewards": reward, "scores": reward, "extra_logs": {"accuracy": float(correct)}}
