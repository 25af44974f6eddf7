"""The rollout simulator (openrlhf_darts.sim): hand-computed steps, a tick-by-tick brute force, properties.

Pure tier: the simulator is standard library only; one test proves it imports with torch, Ray, vLLM, OpenRLHF and numpy
blocked.
"""

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openrlhf_darts.bench.validate_sim import compare, launch_overhead
from openrlhf_darts.core.cost_model import PerTokenLatency
from openrlhf_darts.core.types import GroupPlan
from openrlhf_darts.sim.latency import gpu_like_synthetic, resolve_latency
from openrlhf_darts.sim.replay import (
    VARIANTS,
    assign_engines,
    plan_batch,
    recorded_rollout_time,
    simulate,
    simulate_step,
    uniform_plan,
)
from openrlhf_darts.sim.tail_batching import simulate_tail_batching, simulate_tail_step
from openrlhf_darts.sim.traces import FAMILIES, EmpiricalPrompt, LogNormalPrompt, load_recorded, resolve_trace

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]


def constant(seconds):
    return lambda r: seconds


def linear(seconds_per_sequence):
    return lambda r: seconds_per_sequence * r


def valid(*lengths):
    return [(length, False) for length in lengths]


# ---------------------------------------------------------------------------------------------------- brute force


def brute_force_assignment(num_candidates, num_engines):
    """Each prompt, in order, to the engine with the smallest load so far (ties: lowest index); load += M'_i."""
    loads = [0] * num_engines
    out = []
    for m in num_candidates:
        engine = min(range(num_engines), key=lambda e: (loads[e], e))
        out.append(engine)
        loads[engine] += m
    return out


def brute_force_step_time(candidates, plans, num_engines, latency):
    """Decode tick by tick: each tick costs latency(r) for the r candidates still running on that engine.

    Effective lengths are recomputed here from §3(c) rather than taken from core.cost_model: a shortest-only group with
    at least n valid (untruncated) candidates stops everyone at its n-th shortest valid length; otherwise all run
    fully.
    """
    engines = brute_force_assignment([p.num_candidates for p in plans], num_engines)
    running = [[] for _ in range(num_engines)]
    for group, plan, engine in zip(candidates, plans, engines):
        group = group[: plan.num_candidates]
        stop = None
        good = sorted(length for length, cut in group if not cut)
        if plan.num_long == 0 and len(good) >= plan.num_keep:
            stop = good[plan.num_keep - 1]
        running[engine] += [length if stop is None else min(length, stop) for length, _ in group]
    times = []
    for lengths in running:
        total, tick = 0.0, 0
        while any(length > tick for length in lengths):
            total += latency(sum(length > tick for length in lengths))
            tick += 1
        times.append(total)
    return max(times)


# ---------------------------------------------------------------------------------------------------- assignment


def test_assignment_hand_case():
    # Loads start (0, 0). p0 (3 cand.) -> e0, loads (3, 0); p1 -> e1 (3, 1); p2 -> e1 (3, 2); p3 -> e1 (3, 3).
    assert assign_engines([3, 1, 1, 1], 2) == [0, 1, 1, 1]
    # Equal plans go round robin: (0,0,0) -> e0, e1, e2, then all at load 2 -> e0 again.
    assert assign_engines([2, 2, 2, 2], 3) == [0, 1, 2, 0]


@given(st.lists(st.integers(1, 16), min_size=1, max_size=40), st.integers(1, 6))
def test_assignment_matches_the_least_loaded_rule(num_candidates, num_engines):
    assert assign_engines(num_candidates, num_engines) == brute_force_assignment(num_candidates, num_engines)


def test_assignment_rejects_zero_engines():
    with pytest.raises(ValueError, match="num_engines=0"):
        assign_engines([1], 0)


# ---------------------------------------------------------------------------------------------------- hand-computed st


def test_baseline_constant_latency_is_longest_length():
    # One engine, PTL = 2 s for any r: the step lasts as many ticks as the longest candidate, 10 -> 20 s.
    candidates = [valid(3, 5), valid(4, 10)]
    step = simulate_step(candidates, [GroupPlan.uniform(2)] * 2, 1, constant(2.0))
    assert step.rollout_time_s == 20.0
    assert step.decode_steps == 10
    assert (step.tokens_generated, step.tokens_kept, step.tokens_wasted) == (22, 22, 0)


def test_baseline_linear_latency_is_total_tokens():
    # PTL(r) = 0.5 r: sorted lengths 3,4,5,10 give 3*4 + 1*3 + 1*2 + 5*1 = 22 sequence-steps = 3 + 5 + 4 + 10,
    # so T = 0.5 * 22 = 11 s.
    candidates = [valid(3, 5), valid(4, 10)]
    assert simulate_step(candidates, [GroupPlan.uniform(2)] * 2, 1, linear(0.5)).rollout_time_s == 11.0


def test_two_engines_take_the_slower_one():
    # Round robin: prompt 0 (3, 5) on e0, prompt 1 (4, 10) on e1. Constant 1 s: e0 = 5 s, e1 = 10 s -> 10 s.
    candidates = [valid(3, 5), valid(4, 10)]
    step = simulate_step(candidates, [GroupPlan.uniform(2)] * 2, 2, constant(1.0))
    assert step.engine_times_s == (5.0, 10.0)
    assert step.rollout_time_s == 10.0


def test_shortest_only_stops_at_the_nth_shortest():
    # Plan 3 candidates, keep 2, L = 0: lengths 2, 9, 4 -> release at the 2nd shortest, 4; effective 2, 4, 4.
    # Constant 1 s: 4 s (baseline on the first two, 2 and 9, would take 9 s). Linear 1 s/seq: 2 + 4 + 4 = 10 s.
    candidates = [valid(2, 9, 4)]
    plan = GroupPlan(3, 2, 0)
    step = simulate_step(candidates, [plan], 1, constant(1.0))
    assert step.rollout_time_s == 4.0
    assert simulate_step(candidates, [GroupPlan.uniform(2)], 1, constant(1.0)).rollout_time_s == 9.0
    assert simulate_step(candidates, [plan], 1, linear(1.0)).rollout_time_s == 10.0
    # Kept 2 + 4 = 6 tokens; generated 2 + 4 + 4 = 10; wasted 4 (the aborted candidate's partial length).
    assert (step.tokens_generated, step.tokens_kept, step.tokens_wasted) == (10, 6, 4)
    assert step.kept_length_mean == 3.0  # (2 + 4) / 2 kept


def test_dual_end_runs_everything_and_keeps_both_ends():
    # Plan 3 candidates, keep 2, L = 1: all run (2, 9, 4) -> constant 1 s: 9 s; kept = shortest 2 + longest 9 = 11.
    step = simulate_step([valid(2, 9, 4)], [GroupPlan(3, 2, 1)], 1, constant(1.0))
    assert step.rollout_time_s == 9.0
    assert (step.tokens_generated, step.tokens_kept) == (15, 11)


def test_truncated_candidates_do_not_release_a_shortest_only_group():
    # keep 2 of (3, cap 8 truncated, 8 truncated): one valid finish < 2, so nothing stops early: 8 ticks.
    step = simulate_step([[(3, False), (8, True), (8, True)]], [GroupPlan(3, 2, 0)], 1, constant(1.0))
    assert step.rollout_time_s == 8.0


def test_long_end_keeps_the_truncated_candidate_as_the_long_end():
    # Plan 3, keep 2, L = 1 over (2, 9, cap 12 truncated): all run to the end under either rule (12 s at 1 s per
    # step), but exclude keeps 2 + 9 = 11 and long_end (--darts.truncated long_end) 2 + 12 = 14.
    group = [[(2, False), (9, False), (12, True)]]
    for rule, kept in (("exclude", 11), ("long_end", 14)):
        step = simulate_step(group, [GroupPlan(3, 2, 1)], 1, constant(1.0), rule)
        assert (step.rollout_time_s, step.tokens_kept) == (12.0, kept)
    # Shortest-only, keep 2 of (3, cap 8, 8): under long_end its 2nd stop is a truncated one at the cap, 8 steps,
    # the same as exclude's "too few valid finishes, all run".
    step = simulate_step([[(3, False), (8, True), (8, True)]], [GroupPlan(3, 2, 0)], 1, constant(1.0), "long_end")
    assert (step.rollout_time_s, step.tokens_kept) == (8.0, 11)
    prompts = [LogNormalPrompt(40.0, 1.0, cap=60)] * 4
    with pytest.raises(ValueError, match=r"truncated_rule='keep' is not one of \['exclude', 'long_end'\]"):
        simulate(prompts, 2, 1, constant(1.0), truncated_rule="keep")
    # A cap at about the median truncates often: the rule moves the dual-end kept mean, never the time.
    figures = {rule: simulate(prompts, 2, 1, linear(1.0), truncated_rule=rule) for rule in ("exclude", "long_end")}
    for variant in VARIANTS:
        exclude, long_end = figures["exclude"][variant], figures["long_end"][variant]
        assert exclude["rollout_time_s"] == long_end["rollout_time_s"]
    assert figures["long_end"]["dual_end"]["kept_length_mean"] > figures["exclude"]["dual_end"]["kept_length_mean"]


def test_recorded_replay_pools_all_groups_on_one_engine():
    # Lengths 1, 2 and 2: PTL(r) = r -> 1*3 + 1*2 = 5 = 1 + 2 + 2 sequence-steps.
    assert recorded_rollout_time([[1, 2], [2]], linear(1.0)) == 5.0


# ---------------------------------------------------------------------------------------------------- brute force


@st.composite
def steps(draw):
    n = draw(st.integers(2, 3))
    num_prompts = draw(st.integers(1, 4))
    plans, candidates = [], []
    for _ in range(num_prompts):
        m = draw(st.integers(n, 2 * n))
        plans.append(GroupPlan(m, n, draw(st.integers(0, 1))))
        raw = draw(st.binary(min_size=m, max_size=m))
        # Lengths 0..12 from the low nibble; the top bit marks a truncated candidate (then at the cap, 12).
        candidates.append([(12, True) if b & 0x80 else (b % 13, False) for b in raw])
    engines = draw(st.integers(1, 3))
    base, slope = draw(st.integers(1, 5)), draw(st.integers(0, 5))
    return candidates, plans, engines, (lambda r: base + slope * r)


@given(steps())
def test_step_time_equals_tick_by_tick_brute_force(case):
    candidates, plans, engines, latency = case
    step = simulate_step(candidates, plans, engines, latency)
    assert math.isclose(step.rollout_time_s, brute_force_step_time(candidates, plans, engines, latency), rel_tol=1e-12)
    assert step.tokens_kept <= step.tokens_generated


@given(st.lists(st.lists(st.integers(1, 50), min_size=6, max_size=6), min_size=1, max_size=6), st.integers(1, 3))
def test_shortest_only_never_slower_at_constant_latency(lengths, engines):
    # Same first 4 draws per prompt, no truncation, constant PTL: the 4th shortest of 6 <= the max of the first 4,
    # and shortest-only spreads 6 per prompt as evenly as the baseline spreads 4, so no engine waits longer.
    candidates = [valid(*group) for group in lengths]
    base = simulate_step(candidates, [GroupPlan.uniform(4)] * len(lengths), engines, constant(1.0))
    dart = simulate_step(candidates, [GroupPlan(6, 4, 0)] * len(lengths), engines, constant(1.0))
    assert dart.rollout_time_s <= base.rollout_time_s


# ---------------------------------------------------------------------------------------------------- plans


def test_uniform_plans_match_the_bench_variants():
    # ceil(1.25 * 8) = 10 candidates with L = 1; ceil(1.5 * 8) = 12 with L = 0.
    assert uniform_plan("dual_end", 8) == GroupPlan(10, 8, 1)
    assert uniform_plan("shortest_only", 8) == GroupPlan(12, 8, 0)
    assert uniform_plan("baseline", 8) == GroupPlan(8, 8, 0)
    with pytest.raises(ValueError, match="not one of"):
        uniform_plan("nope", 8)
    with pytest.raises(ValueError, match="n=1 is below 2"):
        plan_batch("baseline", 1, 1)


def test_adaptive_plans_follow_the_spread():
    # Prompt 0 never varies (std 0), prompt 1 varies a lot. Budget round(1.25 * 4 * 2) = 10 in [4, 8] per prompt:
    # reference weights (0 - 0 + 1)/d and (d + 1)/d, so prompt 1 takes the extra units first: [4, 6]; L stays 1
    # because neither prompt reaches max_candidates = 8.
    history = [valid(5, 5, 5, 5, 5), valid(1, 40, 3, 90, 7)]
    plans = plan_batch("adaptive", 4, 2, history)
    assert [p.num_candidates for p in plans] == [4, 6]
    assert [p.num_long for p in plans] == [1, 1]


@given(st.lists(st.lists(st.integers(1, 300), min_size=10, max_size=10), min_size=1, max_size=20))
def test_adaptive_plans_hold_budget_bounds_and_pruning(histories):
    plans = plan_batch("adaptive", 8, len(histories), [valid(*h) for h in histories])
    # Budget round(1.25 * 8 * N) = 10 N, each prompt within [8, 16], L = 0 exactly at the cap (paper's tail pruning).
    assert sum(p.num_candidates for p in plans) == 10 * len(histories)
    assert all(8 <= p.num_candidates <= 16 for p in plans)
    assert all((p.num_long == 0) == (p.num_candidates == 16) for p in plans)


# ---------------------------------------------------------------------------------------------------- simulate()


def test_simulate_baseline_speedup_is_one_and_figures_are_consistent():
    prompts = FAMILIES["7b-like"].prompts(24, random.Random(1))
    results = simulate(prompts, 8, 4, gpu_like_synthetic(), repeats=2, seed=3)
    assert results["baseline"]["speedup"] == 1.0
    assert results["baseline"]["tokens_wasted"] == 0
    for name, r in results.items():
        assert r["tokens_generated"] >= r["tokens_kept"] > 0, name
        assert len(r["steps"]) == 2
    # Shortest-only stops groups early: under the memory-bound table it beats the baseline on these long tails.
    assert results["shortest_only"]["speedup"] > 1.0
    # The same seed gives the same figures (common random numbers, one rng per repeat).
    again = simulate(prompts, 8, 4, gpu_like_synthetic(), repeats=2, seed=3)
    assert again["adaptive"]["rollout_time_s"] == results["adaptive"]["rollout_time_s"]


# ---------------------------------------------------------------------------------------------------- traces


def test_lognormal_draws_are_capped_and_flagged():
    prompt = LogNormalPrompt(median=100.0, sigma=2.0, cap=150)
    draws = prompt.sample(random.Random(0), 2000)
    assert all(1 <= length <= 150 for length, _ in draws)
    assert all(cut == (length == 150) for length, cut in draws)
    # P(draw >= 150) = P(Z >= ln 1.5 / 2 = 0.203) ~ 0.42, so both kinds occur among 2000 draws.
    assert 0.3 < sum(cut for _, cut in draws) / 2000 < 0.55


def test_families_are_deterministic_and_long_tailed():
    a = FAMILIES["32b-like"].prompts(50, random.Random(7))
    b = FAMILIES["32b-like"].prompts(50, random.Random(7))
    assert a == b
    # Within-prompt log-std >= 0.5: a 16-candidate group's max/median is typically exp(1.77 * 0.5) ~ 2.4x or more.
    groups = [p.sample(random.Random(i), 16) for i, p in enumerate(a)]
    ratios = sorted(max(x for x, _ in g) / sorted(x for x, _ in g)[8] for g in groups)
    assert ratios[len(ratios) // 2] > 1.8


def test_load_recorded_pools_groups_without_aborts(tmp_path):
    # Prompt 0: baseline (5, 7) and dual-end (6, 9 truncated) ran fully; the shortest-only group aborted one, so its
    # (2, 3 partial) is left out. Pool = (5, 7, 6, 9) with 9 flagged truncated.
    report = {
        "variants": {
            "baseline": {"groups": [{"lengths": [5, 7], "truncated": [False, False], "aborted": [False, False]}]},
            "dual_end": {"groups": [{"lengths": [6, 9], "truncated": [False, True], "aborted": [False, False]}]},
            "shortest_only": {"groups": [{"lengths": [2, 3], "truncated": [False, False], "aborted": [False, True]}]},
        }
    }
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    assert load_recorded(path) == [EmpiricalPrompt(((5, False), (7, False), (6, False), (9, True)))]
    prompts, description = resolve_trace(str(path), 3, random.Random(0))
    assert len(prompts) == 3 and "recorded" in description


def test_unknown_trace_and_latency_names_are_rejected():
    with pytest.raises(ValueError, match="neither a family"):
        resolve_trace("70b-like", 4, random.Random(0))
    with pytest.raises(ValueError, match="neither one of"):
        resolve_latency("tpu-v9")


# ---------------------------------------------------------------------------------------------------- validation arith


def test_validation_compares_measured_and_simulated_seconds():
    # Profile: PTL 0.01 s at r = 1 and 0.02 s at r = 2; launch overhead 0.5 s at 1 and 1.0 s at 3 requests.
    profile = PerTokenLatency(points=((1, 0.01), (2, 0.02)), meta={"overhead_s": [[1, 0.5], [3, 1.0]]})
    # Baseline: lengths 10, 20 on one engine: 10 steps at r = 2 (0.2 s) + 10 at r = 1 (0.1 s) = 0.3 s; measured 0.25 s
    # -> error 0.3 / 0.25 - 1 = +20%; with launch (2 requests: 0.75 s): 1.05 s. Variant: one candidate of 10:
    # 0.1 s vs measured 0.1 s -> 0%; ratios 0.1/0.3 = 0.333 simulated vs 0.1/0.25 = 0.4 measured -> -16.7%.
    report = {
        "variants": {
            "baseline": {
                "groups": [{"lengths": [10, 20]}],
                "stats": {"wall_s": 0.25, "engine_iterations": 20, "tokens_generated": 30},
            },
            "shortest_only": {
                "groups": [{"lengths": [10]}],
                "stats": {"wall_s": 0.1, "engine_iterations": 10, "tokens_generated": 10},
            },
        }
    }
    result = compare([report], profile)
    base, short = result["rows"]["baseline"], result["rows"]["shortest_only"]
    assert base["simulated_s"] == pytest.approx(0.3) and base["error"] == pytest.approx(0.2)
    assert base["simulated_with_launch_s"] == pytest.approx(1.05)
    assert short["error"] == pytest.approx(0.0)
    assert short["ratio_error"] == pytest.approx((0.1 / 0.3) / 0.4 - 1)
    assert result["max_abs_error"] == pytest.approx(0.2)
    # Beyond the last overhead point the last segment extends: 5 requests -> 1.0 + 2 * 0.25 = 1.5 s.
    assert launch_overhead(profile, 5) == pytest.approx(1.5)
    # Measured fixed costs replace the profile's overhead: baseline 0.3 + 0.05 = 0.35 s vs 0.25 -> +40%;
    # shortest-only 0.1 + 0.0 = 0.1 s vs 0.1 -> 0%.
    fixed = compare([report], profile, {"baseline": 0.05, "shortest_only": 0.0})
    assert fixed["rows"]["baseline"]["error_with_launch"] == pytest.approx(0.4)
    assert fixed["max_abs_error_with_fixed"] == pytest.approx(0.4)


# ---------------------------------------------------------------------------------------------------- purity


def test_sim_imports_without_heavy_packages():
    script = (
        "import importlib, importlib.abc, sys\n"
        "class B(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] in {'torch','ray','vllm','openrlhf','numpy','matplotlib'}:\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, B())\n"
        "for m in ('openrlhf_darts.sim', 'openrlhf_darts.sim.traces', 'openrlhf_darts.sim.latency',\n"
        "          'openrlhf_darts.sim.replay', 'openrlhf_darts.sim.__main__', 'openrlhf_darts.bench.validate_sim',\n"
        "          'openrlhf_darts.bench.tasks'):\n"
        "    importlib.import_module(m)\n"
        "try:\n"
        "    import numpy\n"
        "except ImportError:\n"
        "    print('blocked')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "blocked"


def test_validation_sums_repeated_runs_before_dividing():
    # Constant PTL 0.01 s: a run with longest candidate 10 simulates 0.1 s. Two runs measured 0.05 s and 0.15 s:
    # per-run errors +100% and -33.3%, but summed 0.2 s simulated vs 0.2 s measured -> 0% overall.
    profile = PerTokenLatency(points=((1, 0.01),))

    def run(wall):
        return {
            "variants": {
                "baseline": {
                    "groups": [{"lengths": [10, 4]}],
                    "stats": {"wall_s": wall, "engine_iterations": 10, "tokens_generated": 14},
                }
            }
        }

    row = compare([run(0.05), run(0.15)], profile)["rows"]["baseline"]
    assert row["runs"] == 2 and row["tokens_generated"] == 28
    assert row["error"] == pytest.approx(0.0)
    assert row["per_run_errors"] == pytest.approx([1.0, 0.1 / 0.15 - 1])


# ---------------------------------------------------------------------------------------------------- tail batching


def test_tail_step_hand_case_without_pinning():
    # One engine, PTL = 1 s. Group maxima 10, 4, 20; target 2: groups 1 (done at 4 s) and 0 (10 s) train, group 2 is
    # aborted at t1 = 10 s having decoded min(20, 10) + min(1, 10) = 11 tokens. Kept 5 + 10 + 3 + 4 = 22.
    groups = [valid(5, 10), valid(3, 4), valid(20, 1)]
    step, trained, aborted = simulate_tail_step(groups, [False] * 3, 2, 1, constant(1.0))
    assert (trained, aborted) == ([0, 1], [2])
    assert step.rollout_time_s == 10.0 and step.decode_steps == 10
    assert (step.tokens_kept, step.tokens_generated) == (22, 33)
    assert step.kept_length_mean == 22 / 4


def test_tail_step_hand_case_with_a_pinned_group():
    # Same groups, group 2 pinned: one unpinned slot, taken by group 1 at 4 s; group 0 is aborted then (4 + 4 tokens
    # decoded); group 2's 20-token candidate runs on alone to 20 s. Kept 3 + 4 + 20 + 1 = 28, generated 28 + 8 = 36.
    groups = [valid(5, 10), valid(3, 4), valid(20, 1)]
    step, trained, aborted = simulate_tail_step(groups, [False, False, True], 2, 1, constant(1.0))
    assert (trained, aborted) == ([1, 2], [0])
    assert step.rollout_time_s == 20.0
    assert (step.tokens_kept, step.tokens_generated) == (28, 36)
    # Linear PTL(r) = r: 4 candidates... by hand: lengths 5,10 | 3,4 | 20,1 all run from 0. Steps 0-1: 6 running
    # (6 s), 1-3: 5 (10 s), 3-4: 4 (4 s) -> group 1 done at t1 = 20 s; abort group 0; then only 20 (at 4) runs:
    # 16 steps x 1 s = 16 s -> 36 s.
    step, _, _ = simulate_tail_step(groups, [False, False, True], 2, 1, linear(1.0))
    assert step.rollout_time_s == 36.0


def brute_force_tail_step(groups, pinned, target, latency):
    """One engine, tick by tick: every running candidate decodes one token per tick at latency(running). Groups
    complete at the end of the tick their last candidate finishes; once pinned + completed unpinned groups fill the
    target, the other unpinned groups stop. Returns (step time, trained, tokens decoded)."""
    lengths = {(g, j): length for g, group in enumerate(groups) for j, (length, _) in enumerate(group)}
    decoded = dict.fromkeys(lengths, 0)
    stopped, done, now, accepted_unpinned = set(), {}, 0.0, []
    slots = target - sum(pinned)
    if slots == 0:
        stopped = {g for g in range(len(groups)) if not pinned[g]}
    while True:
        running = [k for k in lengths if k[0] not in stopped and decoded[k] < lengths[k]]
        if not running:
            break
        now += latency(len(running))
        for k in running:
            decoded[k] += 1
        for g in range(len(groups)):
            if (
                g not in done
                and g not in stopped
                and all(decoded[(g, j)] == lengths[(g, j)] for j in range(len(groups[g])))
            ):
                done[g] = now
        finished = sorted((done[g], g) for g in done if not pinned[g])
        if len(finished) >= slots and slots > 0 and not accepted_unpinned:
            accepted_unpinned = [g for _, g in finished[:slots]]
            stopped = {g for g in range(len(groups)) if not pinned[g] and g not in accepted_unpinned}
    trained = sorted(accepted_unpinned + [g for g in range(len(groups)) if pinned[g]])
    return now, trained, sum(decoded.values())


@st.composite
def tail_steps(draw):
    size = draw(st.integers(1, 6))
    groups = [valid(*draw(st.lists(st.integers(1, 9), min_size=1, max_size=3))) for _ in range(size)]
    target = draw(st.integers(1, size))
    pinned = [False] * size
    for g in draw(st.lists(st.integers(0, size - 1), max_size=target, unique=True)):
        pinned[g] = True
    base, slope = draw(st.integers(1, 5)), draw(st.integers(0, 5))
    return groups, pinned, target, (lambda r: base + slope * r)


@given(tail_steps())
def test_tail_step_equals_tick_by_tick_brute_force_on_one_engine(case):
    groups, pinned, target, latency = case
    step, trained, _ = simulate_tail_step(groups, pinned, target, 1, latency)
    seconds, trained_bf, decoded = brute_force_tail_step(groups, pinned, target, latency)
    # Ties in completion time go to the lower index in both; a group finishing in the same tick as the one that
    # fills the slots is stopped, as the generator aborts it.
    assert trained == trained_bf
    assert math.isclose(step.rollout_time_s, seconds, rel_tol=1e-12)
    assert step.tokens_generated == decoded


def test_tail_step_with_nothing_to_abort_is_the_baseline_step():
    # r = 1 at the end of an epoch: every launched group trains, so the step is replay.simulate_step's baseline.
    rng = random.Random(5)
    groups = [[(rng.randint(1, 400), False) for _ in range(4)] for _ in range(12)]
    step, trained, aborted = simulate_tail_step(groups, [False] * 12, 12, 3, gpu_like_synthetic())
    base = simulate_step(groups, [GroupPlan.uniform(4)] * 12, 3, gpu_like_synthetic())
    assert (trained, aborted) == (list(range(12)), [])
    assert math.isclose(step.rollout_time_s, base.rollout_time_s, rel_tol=1e-12)
    assert step.tokens_generated == step.tokens_kept == base.tokens_generated


def test_simulate_tail_batching_queue_and_figures():
    prompts = FAMILIES["7b-like"].prompts(400, random.Random(2))
    # N = 16, r = 1.25: 20 launched per step, 4 aborted. Capped at one deferral, the 4 deferred prompts come back
    # pinned (4 per steady step); dropped, nothing comes back.
    capped = simulate_tail_batching(prompts, 4, 16, 4, gpu_like_synthetic(), 1.25, "defer", 1, steps=4, seed=1)
    assert capped["pinned_mean"] == 4 and capped["resumed_mean"] == 4
    assert capped["early_stop_ratio"] == 4 / 20 and capped["candidates_mean"] == 4 * 20 / 16
    dropped = simulate_tail_batching(prompts, 4, 16, 4, gpu_like_synthetic(), 1.25, "drop", None, steps=4, seed=1)
    assert dropped["pinned_mean"] == 0 and dropped["resumed_mean"] == 0
    uncapped = simulate_tail_batching(prompts, 4, 16, 4, gpu_like_synthetic(), 1.25, "defer", None, steps=4, seed=1)
    assert uncapped["pinned_mean"] == 0 and uncapped["resumed_mean"] == 4
    for r in (capped, dropped, uncapped):
        assert r["tokens_generated"] > r["tokens_kept"] > 0 and len(r["steps"]) == 4
    with pytest.raises(ValueError, match="the prompt stream holds 30 prompts"):
        simulate_tail_batching(prompts[:30], 4, 16, 4, gpu_like_synthetic(), steps=4)


def test_sim_cli_adds_the_tail_batching_arms(tmp_path):
    from openrlhf_darts.sim.__main__ import main

    report = main(
        ["--trace", "7b-like", "--latency", "gpu-like-synthetic", "--engines", "4", "--prompts", "16", "--n", "4",
         "--repeats", "2", "--tail-steps", "3", "--out", str(tmp_path)]
    )  # fmt: skip
    variants = report["results"][0]["variants"]
    assert list(variants) == [
        "baseline",
        "dual_end",
        "shortest_only",
        "adaptive",
        "tail_batching",
        "tail_batching_drop",
    ]
    assert variants["tail_batching"]["settings"]["aborted_prompts"] == "defer"
    assert "tail_batching_drop" in (tmp_path / "table.txt").read_text()
    # The other variants see the same first 16 prompts as without the tail arms.
    alone = main(
        ["--trace", "7b-like", "--latency", "gpu-like-synthetic", "--engines", "4", "--prompts", "16", "--n", "4",
         "--repeats", "2", "--variants", "baseline", "adaptive", "--out", str(tmp_path / "alone")]
    )  # fmt: skip
    assert alone["results"][0]["variants"]["adaptive"]["rollout_time_s"] == variants["adaptive"]["rollout_time_s"]
