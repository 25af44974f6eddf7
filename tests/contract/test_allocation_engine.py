"""Adaptive allocation end to end on the real engine: spread -> more candidates, budget held, exact resume."""

import json
from types import SimpleNamespace

import pytest
from conftest import prompt_batches, rollout_args

from openrlhf_darts.config import DartsConfig
from openrlhf_darts.core.cost_model import PerTokenLatency
from openrlhf_darts.trainer.planner import prompt_key

pytestmark = [pytest.mark.contract, pytest.mark.timeout(600)]

PROMPTS = [f"{i} big red dogs jump over the cat" for i in range(8)]
GEN_KWARGS = dict(temperature=1.0, top_p=1.0, max_new_tokens=64, max_len=512)


def _generator(engine, tokenizer, darts: dict, epochs: int = 2):
    from openrlhf_darts.trainer.samples_generator import DartsSamplesGenerator

    args = rollout_args(n=4, batch_size=8, darts={"enable": True, **darts})
    config = DartsConfig.from_args(args)
    # The same 8 prompts once per epoch, as a dataloader would serve them again in the next epoch.
    return DartsSamplesGenerator(
        SimpleNamespace(args=args), prompt_batches(PROMPTS, 8) * epochs, None, tokenizer, [engine], config
    )


def test_spread_gets_candidates_and_budget_holds(ray_cluster, darts_engine, tokenizer):
    # n=4, M_low=4, M_up=8, avg 5 -> budget 8 * 5 = 40 candidates per step.
    generator = _generator(darts_engine, tokenizer, {"max_candidates": 8, "avg_candidates": 5.0})
    samples, *_ = generator.generate_samples(**GEN_KWARGS)
    assert len(samples) == 8 * 4
    # Step 1 knows no prompt: every weight is equal, so the allocation is uniform (5 each).
    assert [o.plan.num_candidates for o in generator.last_outcomes] == [5] * 8
    assert generator.pop_metrics()["darts/budget"] == 40

    stds = generator.planner.stats.weights([prompt_key(p) for p in PROMPTS])
    assert len(set(stds)) > 1, f"the stopping tiny model should give prompts different spreads, got {stds}"
    plans = generator.planner.plan(PROMPTS)
    counts = [p.num_candidates for p in plans]
    assert sum(counts) == 40 and all(4 <= c <= 8 for c in counts)
    # Allocation is monotone in the smoothed spread: a prompt with a larger std never gets fewer candidates.
    for i in range(8):
        for j in range(8):
            if stds[i] > stds[j]:
                assert counts[i] >= counts[j], (stds, counts)
    # Tail pruning (paper rule): exactly the prompts saturated at M_up run shortest-only.
    assert [p.num_long == 0 for p in plans] == [c == 8 for c in counts]

    samples, *_ = generator.generate_samples(**GEN_KWARGS)
    assert len(samples) == 8 * 4
    metrics = generator.pop_metrics()
    assert metrics["darts/budget"] == 40 and metrics["darts/candidates_max"] <= 8
    assert ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0


def test_resume_restores_statistics_and_next_plans_exactly(ray_cluster, darts_engine, tokenizer, tmp_path):
    profile = tmp_path / "ptl.json"
    # A made-up linear profile: 10 ms per step plus 1 ms per running sequence.
    PerTokenLatency([(1, 0.011), (64, 0.074)]).save(profile)
    darts = {"max_candidates": 8, "budget": "cost_model", "latency_profile": str(profile), "cost_weight": 0.5}
    uninterrupted = _generator(darts_engine, tokenizer, darts)
    uninterrupted.generate_samples(**GEN_KWARGS)
    first = uninterrupted.pop_metrics()
    assert first["darts/budget_cost_model"] == 0.0  # nothing recorded yet: the first step uses the fixed average

    # Checkpoint: the planner state travels as JSON inside OpenRLHF's client_states.
    saved = json.loads(json.dumps(uninterrupted.planner.state_dict()))
    resumed = _generator(darts_engine, tokenizer, darts)
    resumed.planner.load_state_dict(saved)

    assert resumed.planner.stats.state_dict() == uninterrupted.planner.stats.state_dict()
    assert resumed.planner.plan(PROMPTS) == uninterrupted.planner.plan(PROMPTS)
    assert resumed.planner.last_budget == uninterrupted.planner.last_budget
    assert resumed.planner.last_budget_mode == "cost_model"
    assert 8 * 4 <= resumed.planner.last_budget <= 8 * 8
