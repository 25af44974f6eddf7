"""`GroupPlanner` (trainer/planner.py) on synthetic outcomes: the cost-model replay plans what plan() returns, the
budget history holds truncation and imputed aborted lengths, ties go by prompt key, and checkpoints round-trip or are
refused.

The planner is standard library only (config + core), so these run in the unit tier; the engine-backed checks are in
tests/contract/test_allocation_engine.py.
"""

import json
import random

import pytest

from openrlhf_darts.config import DartsConfig
from openrlhf_darts.core.allocation import normalize_weights
from openrlhf_darts.core.budget import utility_budget
from openrlhf_darts.core.cost_model import PerTokenLatency
from openrlhf_darts.core.length_fit import fit_lengths
from openrlhf_darts.core.types import CandidateResult, GroupOutcome, GroupPlan
from openrlhf_darts.trainer.planner import GroupPlanner, prompt_key

pytestmark = pytest.mark.unit

PROMPTS = [f"prompt {i}: how many apples" for i in range(8)]


def config(tmp_path=None, **flags) -> DartsConfig:
    if flags.get("budget") == "cost_model":
        profile = tmp_path / "ptl.json"
        PerTokenLatency([(1, 0.011), (64, 0.074)]).save(profile)  # 10 ms per step + 1 ms per running sequence
        flags["latency_profile"] = str(profile)
    return DartsConfig.from_flags({"enable": True, **flags}, n_samples_per_prompt=4)


def outcome(plan: GroupPlan, lengths, cap=None) -> GroupOutcome:
    """The engine's outcome for true ``lengths``: a shortest-only group aborts what runs past its release length."""
    truncated = [cap is not None and length >= cap for length in lengths]
    seen = [min(length, cap) if cap is not None else length for length in lengths]
    valid = sorted(length for length, cut in zip(seen, truncated) if not cut)
    release = valid[plan.num_keep - 1] if plan.shortest_only and len(valid) >= plan.num_keep else None
    results = []
    for j, (length, cut) in enumerate(zip(seen, truncated)):
        if release is not None and length > release + 1:
            results.append(CandidateResult(j, release + 1, False, True))  # aborted one step past the release length
        else:
            results.append(CandidateResult(j, length, cut, False))
    return GroupOutcome.from_results(plan, results)


def run_step(planner, rng, spreads, cap=512):
    plans = planner.plan(PROMPTS)
    outcomes = [
        outcome(plan, [max(1, round(rng.lognormvariate(5.0, spread))) for _ in range(plan.num_candidates)], cap)
        for plan, spread in zip(plans, spreads)
    ]
    planner.observe(PROMPTS, outcomes, max_tokens=cap)
    return plans, outcomes


def test_cost_model_plans_what_it_replayed(tmp_path):
    planner = GroupPlanner(config(tmp_path, budget="cost_model", max_candidates=8, cost_weight=0.05), num_engines=2)
    rng = random.Random(0)
    spreads = [1.0, 0.1, 0.2, 0.9, 0.1, 0.3, 0.1, 0.2]
    run_step(planner, rng, spreads)  # the first step has nothing to replay: fixed budget
    assert planner.last_budget_mode == "fixed" and planner.last_budget_choice is None
    pruned = 0
    for _ in range(3):
        plans, _ = run_step(planner, rng, spreads)
        choice = planner.last_budget_choice
        assert planner.last_budget_mode == "cost_model"
        # The replay scored exactly the plans plan() returned: same M'_i and the same shortest-only prompts.
        assert plans == list(choice.plans) and sum(p.num_candidates for p in plans) == choice.budget
        pruned += sum(p.shortest_only for p in plans)
    assert pruned > 0  # precondition: tail pruning happened, so the replay had to model it


def test_cost_model_replays_under_the_truncation_rule(tmp_path):
    # Under --darts.truncated long_end the replay keeps truncated candidates as a dual-end group's long end (and stops
    # shortest-only groups at their first n stops), so it scores budgets differently from exclude: the planner's
    # choice is the long_end replay of its own history, weights and keys.
    cfg = config(tmp_path, budget="cost_model", max_candidates=8, cost_weight=0.0, truncated="long_end")
    planner = GroupPlanner(cfg, num_engines=2)
    rng = random.Random(3)
    spreads = [1.0, 0.1, 0.9, 0.9, 0.1, 0.8, 0.1, 0.7]
    for _ in range(2):
        run_step(planner, rng, spreads, cap=200)  # median length e^5 = 148: the cap truncates the wide prompts often
    keys = [prompt_key(p) for p in PROMPTS]
    weights = normalize_weights(planner.stats.weights(keys), cfg.weight_norm)
    history = [group for step in planner.history for group in step]
    assert any(cut for group in history for _, cut in group)  # precondition: truncated candidates to rank
    plans = planner.plan(PROMPTS)
    replayed = {
        rule: utility_budget(
            history, len(PROMPTS), 4, cfg.num_long, cfg.min_candidates, cfg.max_candidates, 0.0, planner.latency, 2,
            cfg.tail_prune, weights=weights, tie_keys=keys, truncated_rule=rule,
        )  # fmt: skip
        for rule in ("exclude", "long_end")
    }
    assert planner.last_budget_choice == replayed["long_end"] and plans == list(replayed["long_end"].plans)
    assert replayed["exclude"].grid != replayed["long_end"].grid  # precondition: the rules score budgets differently


def test_history_records_truncation_and_imputes_aborted_lengths():
    planner = GroupPlanner(config())
    plan = GroupPlan(6, 4, 0)
    # True lengths 30, 40, 50, 60 finish; 300 and 900 are aborted at the release length 60 + 1. With cap 512 none
    # is truncated.
    record = outcome(plan, [30, 40, 50, 60, 300, 900], cap=512)
    assert record.aborted == (False,) * 4 + (True, True) and record.lengths[4:] == (61, 61)
    planner.observe(PROMPTS[:1], [record], max_tokens=512)
    (group,) = planner.history[-1]
    assert group[:4] == [(30, False), (40, False), (50, False), (60, False)]
    # The aborted pair is imputed from the group's censored fit (its 1/4 and 3/4 conditional quantiles above 61),
    # not kept at the partial length 61 (biased low) and not flagged as truncated (the old history's "censored").
    fit = fit_lengths(record.lengths, record.censored, 512)
    assert group[4:] == [fit.tail_quantile(61, 0.25), fit.tail_quantile(61, 0.75)]
    assert all(length > 61 for length, _ in group[4:])
    # A truncated candidate stays (cap, True): the replay counts it at the cap.
    truncating = outcome(GroupPlan(4, 4, 0), [30, 40, 600, 50], cap=512)
    planner.observe(PROMPTS[:1], [truncating], max_tokens=512)
    assert planner.history[-1][0] == [(30, False), (40, False), (512, True), (50, False)]


def test_observe_clips_at_the_cap_the_engine_recorded():
    # The engine recorded this group's cap, 64 (max_len - prompt tokens); the step-level max_tokens=512 is only the
    # fallback for records without one. True lengths 30, 40, 50, 60 finish; two are aborted at 61.
    results = [CandidateResult(j, length, False, False) for j, length in enumerate([30, 40, 50, 60])]
    results += [CandidateResult(4, 61, False, True), CandidateResult(5, 61, False, True)]
    record = GroupOutcome.from_results(GroupPlan(6, 4, 0), results, max_tokens=64)
    planner = GroupPlanner(config())
    planner.observe(PROMPTS[:1], [record], max_tokens=512)
    at_64 = fit_lengths(record.lengths, record.censored, 64)
    assert at_64.std != fit_lengths(record.lengths, record.censored, 512).std  # precondition: the cap matters
    assert planner.stats.std(prompt_key(PROMPTS[0])) == at_64.std
    # The aborted pair's imputed lengths come from the fit clipped at 64: at most 64, and at 64 as truncated.
    imputed = planner.history[-1][0][4:]
    assert imputed == [at_64.tail_quantile(61, 0.25), at_64.tail_quantile(61, 0.75)]
    assert all(length <= 64 and cut == (length == 64) for length, cut in imputed)


def test_first_step_ties_go_by_prompt_key_not_position():
    # weight_norm plain: unseen prompts all weigh 0. Budget round(4.5 * 8) = 36 over [4, 8]: each prompt gets 4, and
    # the 4 remaining candidates go to the 4 smallest prompt keys, wherever they sit in the batch.
    planner = GroupPlanner(config(weight_norm="plain", max_candidates=8, avg_candidates=4.5))
    counts = [p.num_candidates for p in planner.plan(PROMPTS)]
    smallest = sorted(PROMPTS, key=prompt_key)[:4]
    assert counts == [5 if p in smallest else 4 for p in PROMPTS]
    reversed_counts = [p.num_candidates for p in planner.plan(PROMPTS[::-1])]
    assert reversed_counts == counts[::-1]


def test_state_round_trip_is_exact_and_old_states_are_refused(tmp_path):
    cfg = config(tmp_path, budget="cost_model", max_candidates=8)
    planner = GroupPlanner(cfg)
    rng = random.Random(1)
    for _ in range(3):
        run_step(planner, rng, [0.8, 0.2] * 4)
    state = json.loads(json.dumps(planner.state_dict()))
    assert state["version"] == 2
    resumed = GroupPlanner(cfg)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == planner.state_dict()
    assert resumed.plan(PROMPTS) == planner.plan(PROMPTS)
    # A state written before issue 11 (no version; history flags meant "censored") is refused, not reinterpreted.
    old = {"stats": {key: value for key, value in state["stats"].items() if key != "version"}, "history": []}
    with pytest.raises(ValueError, match=r"written before versions were recorded \(version 1\)"):
        GroupPlanner(cfg).load_state_dict(old)
    with pytest.raises(ValueError, match="LengthStats state was written before versions were recorded"):
        GroupPlanner(cfg).load_state_dict({**old, "version": 2})
