"""Reward function for contract tests: counts its calls in a file, so tests can check who was scored.

Loaded by OpenRLHF's SingleTurnAgentExecutor inside the engine actor (`--reward.remote_url path/to/this.py`).
Reward = 1.0 when the response has an even number of characters, else 0.0 (any deterministic rule would do).
"""

import os


def reward_func(queries, prompts, labels):
    path = os.environ["DARTS_TEST_REWARD_LOG"]
    with open(path, "a") as log:
        for query in queries:
            log.write(f"{len(query)}\n")
    rewards = [float(len(q) % 2 == 0) for q in queries]
    return {"rewards": rewards[0], "scores": rewards[0], "extra_logs": {"query_chars": float(len(queries[0]))}}
