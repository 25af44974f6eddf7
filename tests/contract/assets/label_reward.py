"""Reward function for the failure-path tests: what it does for a sample is chosen by the sample's label.

Loaded by OpenRLHF's SingleTurnAgentExecutor inside the engine actor (`--reward.remote_url path/to/this.py`), one
sample per call, from a worker thread.

- "raise": raises (a reward function that fails);
- "no_reward": answers a score but no "rewards" value (an endpoint that returns no reward for the sample);
- "one": reward 1.0 for every sample, so the group's mean is 1.0 and dynamic filtering with range (0, 1) drops it;
- anything else: 0.0, 1.0, 0.0, 1.0, ... in the order this prompt's samples are scored, so any n >= 2 kept samples
  of one group have a mean strictly inside (0, 1) and dynamic filtering keeps the group, whatever the engine sampled.
"""

import threading
from collections import Counter

_LOCK = threading.Lock()
_CALLS: Counter = Counter()  # prompt -> samples of it scored so far


def reward_func(queries, prompts, labels):
    (query,), (prompt,), (label,) = queries, prompts, labels
    if label == "raise":
        raise ZeroDivisionError(f"reward_func failed on purpose for label {label!r}")
    if label == "no_reward":
        return {"scores": 0.0, "extra_logs": {}}
    if label == "one":
        reward = 1.0
    else:
        with _LOCK:
            reward = float(_CALLS[prompt] % 2)
            _CALLS[prompt] += 1
    return {"rewards": reward, "scores": reward, "extra_logs": {"query_chars": float(len(query))}}
