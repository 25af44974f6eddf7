"""User `AgentExecutor`s (`--train.agent_func_path`) with DARTS, through upstream's train_ppo_ray in local mode.

Upstream loads the file's `AgentExecutor` inside every engine actor and runs it for each sample; DARTS runs it once per
candidate (`generate_group`) and keeps n per prompt. A single-turn executor trains for two steps; a multi-turn one
fails the step at its second `generate` call with an error naming the flag (tests/contract/assets/*_agent.py).
"""

import json
import subprocess
from pathlib import Path

import pytest
from test_local_train import N, PROMPTS, local_command

pytestmark = [pytest.mark.contract, pytest.mark.timeout(600)]

ASSETS = Path(__file__).parent / "assets"


def test_single_turn_agent_trains_two_steps_with_darts(tmp_path, stopping_model_path):
    command, run_dir = local_command(
        tmp_path, stopping_model_path, "--train.agent_func_path", str(ASSETS / "single_turn_agent.py"), reward=False
    )
    done = subprocess.run(command, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, f"local run failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    records = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        # The user's executor produced every trained sample: each logs agent_calls = 1.0, so the mean is exactly 1.
        assert record["agent_calls"] == 1.0
        # DARTS planned 1.25 n = 5 candidates per prompt (4 prompts: 20) and kept exactly n = 4 per prompt.
        assert record["darts/budget"] == 20 and record["rollout/num_samples"] == PROMPTS * N
        assert record["darts/tokens_kept"] == record["local/response_tokens"]
        assert 0.0 <= record["rollout/reward_mean"] <= 1.0
        assert record["local/engine_unfinished_requests"] == 0


def test_multi_turn_agent_fails_at_its_second_generate_call(tmp_path, stopping_model_path):
    command, run_dir = local_command(
        tmp_path, stopping_model_path, "--train.agent_func_path", str(ASSETS / "multi_turn_agent.py"), reward=False
    )
    done = subprocess.run(command, capture_output=True, text=True, timeout=540)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert "called generate a second time: the executor of --train.agent_func_path is multi-turn" in output
    assert "DARTS needs single-turn executors" in output
    assert not (run_dir / "steps.jsonl").exists() or not (run_dir / "steps.jsonl").read_text().strip()
