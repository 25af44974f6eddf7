"""Math reward for DAPO-Math-17k-style data: +1 when math-verify finds the final answer equals the label, else -1.

Loaded by OpenRLHF's `SingleTurnAgentExecutor` inside each engine actor via `--reward.remote_url <this file>`; it is
called once per sample with the decoded prompt+response (`queries`), the prompt and the label (the reference answer),
from a worker thread (`asyncio.to_thread`). Baseline and DARTS runs load the same file, so rewards agree.

Answers are compared by math-verify (PyPI `math-verify`, with `latex2sympy2_extended`; pinned in requirements-*.txt):
`parse` extracts the response's final answer (a `\\boxed{}`, "the final answer is ...", an `Answer:` line, else the
last expression) and `verify` compares it with the parsed label symbolically and numerically, so `\\frac{1}{2}` equals
`0.5`, nested braces and `\\dfrac` parse, and units or text around the answer do not count.

Time bound. math-verify's own timeouts use `signal.alarm`, which works only in a process's main thread; called from
OpenRLHF's worker thread, math-verify 0.9.0 raises ValueError in every `parse` and `verify` (which upstream's executor
logs at info level and turns into `reward=None`). So its timeouts are off here (`parsing_timeout=None`,
`timeout_seconds=None`) and each sample is parsed and verified in a helper process (this file run as
`python reward_math.py --worker`, a few per engine actor, started on first use) that is killed when it takes longer
than `REWARD_MATH_TIMEOUT_S` seconds (default 10). A size limit alone cannot bound the time: `verify` of a
14-character answer such as `9^{9^{9^{9}}}` runs for minutes. A timed-out sample gets the wrong-answer reward and
`extra_logs["verify_timeout"] = 1`, so it is counted, never silent; a malformed answer is simply wrong (-1).

Environment: `REWARD_MATH_TIMEOUT_S` (seconds per sample, default 10), `REWARD_MATH_WORKERS` (helper processes per
engine actor, default 2; more than that run one after another).
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import select
import subprocess
import sys
import threading
import time

CORRECT, WRONG = 1.0, -1.0
TIMEOUT_S = float(os.environ.get("REWARD_MATH_TIMEOUT_S", "10"))
NUM_WORKERS = int(os.environ.get("REWARD_MATH_WORKERS", "2"))
START_TIMEOUT_S = 300.0  # importing sympy + math-verify in a fresh process on a loaded machine
_SCRIPT = os.path.abspath(__file__)
if TIMEOUT_S <= 0 or NUM_WORKERS < 1:
    raise ValueError(
        f"REWARD_MATH_TIMEOUT_S={TIMEOUT_S} and REWARD_MATH_WORKERS={NUM_WORKERS} must be > 0 and >= 1; "
        "unset them for the defaults (10 s, 2 workers)"
    )


# ---- the check itself (runs in a helper process) -------------------------------------------------------------------
def gold_text(label: str) -> str:
    """The label as math-verify parses it: bare labels (`\\frac{1}{2}`, `34`) are wrapped in `$...$` as LaTeX."""
    label = label.strip()
    return label if "$" in label or "\\boxed" in label else f"${label}$"


def check(response: str, label: str) -> dict:
    """math-verify's verdict on one response, with its signal-based timeouts off: {"correct", "answered"}."""
    from math_verify import parse, verify

    gold = parse(gold_text(label), parsing_timeout=None)
    if not gold:
        raise ValueError(f"math-verify parses no answer from the label {label!r}; fix the dataset's label column")
    answer = parse(response, parsing_timeout=None)
    correct = bool(answer) and verify(gold, answer, timeout_seconds=None)
    return {"correct": bool(correct), "answered": bool(answer)}


def _serve() -> None:
    """Helper process loop: one JSON request per stdin line, one JSON reply per stdout line."""
    import logging

    # math-verify warns once that its timeouts are off; the parent process bounds the time instead.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    import math_verify  # noqa: F401  (import before announcing readiness, so requests are timed from here)

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = check(request["response"], request["label"])
        except Exception as e:  # a label math-verify cannot read: reported to the caller, which raises
            reply = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), flush=True)


# ---- helper processes (the engine actor's side) -------------------------------------------------------------------
class _Worker:
    """One helper process; used by one thread at a time."""

    def __init__(self):
        self.process = subprocess.Popen(
            [sys.executable, _SCRIPT, "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        if self._read(START_TIMEOUT_S) != {"ready": True}:
            self.kill()
            raise RuntimeError(f"the math-verify helper ({_SCRIPT} --worker) did not start within {START_TIMEOUT_S} s")

    def _read(self, timeout: float) -> dict | None:
        """The next reply, or None when none came within ``timeout`` seconds; RuntimeError if the process ended."""
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise RuntimeError(f"the math-verify helper ({_SCRIPT} --worker) ended with exit code {code}")
        return json.loads(line)

    def ask(self, response: str, label: str, timeout: float) -> dict | None:
        self.process.stdin.write(json.dumps({"response": response, "label": label}) + "\n")
        self.process.stdin.flush()
        return self._read(timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


class _Pool:
    """Up to NUM_WORKERS helpers, started on demand; a helper that times out is killed and replaced on next use."""

    def __init__(self, size: int):
        self.idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self.slots = threading.BoundedSemaphore(size)
        self.all: set[_Worker] = set()
        self.lock = threading.Lock()

    def check(self, response: str, label: str, timeout: float) -> dict | None:
        """check() in a helper process; None when it took longer than ``timeout`` seconds (the helper is killed)."""
        with self.slots:
            try:
                worker = self.idle.get_nowait()
            except queue.Empty:
                worker = _Worker()
                with self.lock:
                    self.all.add(worker)
            reply = None
            try:
                reply = worker.ask(response, label, timeout)
            finally:
                if reply is None:  # timed out, or the helper broke: it is not reused
                    with self.lock:
                        self.all.discard(worker)
                    worker.kill()
                else:
                    self.idle.put(worker)
            return reply

    def close(self) -> None:
        with self.lock:
            workers, self.all = list(self.all), set()
        for worker in workers:
            worker.kill()


_POOL = _Pool(NUM_WORKERS)


def close_helpers() -> None:
    """Kill this module's helper processes (done at exit too); the next call starts new ones."""
    _POOL.close()


atexit.register(close_helpers)


def response_part(query: str, prompt: str) -> str:
    """The response inside ``query`` (= decoded prompt + response): the query past its common prefix with the prompt,
    so the prompt's own "Answer: $Answer" never counts, even when decoding does not reproduce the prompt exactly."""
    common = 0
    for a, b in zip(query, prompt):
        if a != b:
            break
        common += 1
    return query[common:]


def reward_func(queries: list[str], prompts: list[str], labels: list[str]) -> dict:
    """OpenRLHF's reward-function contract; its executor calls it with one sample at a time, from a worker thread."""
    if not len(queries) == len(prompts) == len(labels) == 1:
        raise ValueError(f"reward_func got {len(queries)} queries; OpenRLHF's executor sends exactly one per call")
    query, prompt, label = queries[0], prompts[0], str(labels[0])
    response = response_part(query, prompt)
    start = time.monotonic()
    verdict = _POOL.check(response, label, TIMEOUT_S)
    if verdict is not None and "error" in verdict:
        raise ValueError(verdict["error"])
    timed_out = verdict is None
    correct = not timed_out and verdict["correct"]
    reward = CORRECT if correct else WRONG
    return {
        "rewards": reward,
        "scores": reward,
        "extra_logs": {
            "accuracy": float(correct),
            "answered": float(not timed_out and verdict["answered"]),
            "verify_timeout": float(timed_out),
            "verify_seconds": time.monotonic() - start,
        },
    }


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _serve()
