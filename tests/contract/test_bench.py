"""The rollout benchmark (openrlhf_darts.bench.rollout) on the session's real tiny engine; well-formed output.

A benchmark, not a timed test: structure, and its token counts against vLLM's own counters, are checked on the
engine, its figures on hand-computed runs; never speed.
"""

import json

import pytest
from conftest import stop_token_ids

from openrlhf_darts.bench import rollout, rollout_report
from openrlhf_darts.sim.traces import load_recorded

pytestmark = [pytest.mark.contract, pytest.mark.timeout(600)]

N = 2
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def bench_report(ray_cluster, darts_engine, tokenizer, tmp_path_factory):
    ray_cluster.get(darts_engine.pop_group_outcomes.remote())  # start from a clean engine
    prompts, labels = rollout.builtin_prompts(tokenizer, 3, seed=0)
    report = rollout.run_benchmark(
        darts_engine, tokenizer, prompts, labels, n=N, max_tokens=MAX_TOKENS, max_length=512,
        stop_token_ids=stop_token_ids(tokenizer), progress=False,
    )  # fmt: skip
    report["meta"] = {"model": "tiny", "n": N}
    out = tmp_path_factory.mktemp("bench")
    return report, rollout_report.write_outputs(report, out)


def test_outputs_are_well_formed(bench_report):
    report, paths = bench_report
    on_disk = json.loads(open(paths["json"]).read())
    assert list(on_disk["variants"]) == ["baseline", "shortest_only", "dual_end"]
    with open(paths["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    table = open(paths["table"]).read()
    assert "engine iterations" in table and "longest request" in table and "shortest_only" in table
    # The sim can replay the recorded lengths: one pooled distribution per prompt.
    assert len(load_recorded(paths["json"])) == 3


def test_counts_are_consistent(bench_report):
    report, _ = bench_report
    # n = 2: baseline 2 candidates, shortest-only ceil(1.5 * 2) = 3 with L = 0, dual-end ceil(1.25 * 2) = 3 with L = 1.
    expected = {"baseline": (2, 0), "shortest_only": (3, 0), "dual_end": (3, 1)}
    for name, variant in report["variants"].items():
        candidates, num_long = expected[name]
        assert (variant["plan"]["num_candidates"], variant["plan"]["num_long"]) == (candidates, num_long)
        stats, groups = variant["stats"], variant["groups"]
        assert len(groups) == 3
        for group in groups:
            assert len(group["lengths"]) == candidates
            assert len(group["kept"]) == N  # exactly n kept per prompt
            assert all(0 < length <= MAX_TOKENS for length in group["lengths"])
        # Generated tokens against vLLM's own count of the tokens it generated during the variant (aborted candidates
        # up to their abort): the recorded lengths must account for every token the engine produced.
        assert stats["tokens_generated"] == stats["engine_tokens_generated"] > 0
        # Wasted = the lengths of the candidates not kept, as the engine reported them.
        dropped = [g["lengths"][j] for g in groups for j in range(candidates) if j not in g["kept"]]
        assert stats["tokens_wasted"] == sum(dropped)
        # vLLM's own iteration count: every token of the longest request needs an iteration of its own, and every
        # counted iteration sampled at least one token.
        assert stats["longest_request"] <= stats["engine_iterations"] <= stats["tokens_generated"]
        assert stats["all_admitted"]
        if name != "shortest_only":
            assert stats["aborted"] == 0  # the baseline and dual-end groups run every candidate to the end
    assert report["variants"]["baseline"]["stats"]["tokens_wasted"] == 0


def test_tail_batching_arm_keeps_the_first_b_groups_and_aborts_the_rest(ray_cluster, darts_engine, tokenizer):
    # B = 3 shared prompts, r = 2: 6 launched (3 extra from the same generator), 3 kept, 3 aborted when the 3rd
    # completes. The baseline runs first on the same 3 prompts.
    prompts, labels = rollout.builtin_prompts(tokenizer, 6, seed=0)
    assert prompts[:3] == rollout.builtin_prompts(tokenizer, 3, seed=0)[0]  # the shared prompts do not move
    report = rollout.run_benchmark(
        darts_engine, tokenizer, prompts[:3], labels[:3], n=N, max_tokens=MAX_TOKENS, max_length=512,
        stop_token_ids=stop_token_ids(tokenizer), progress=False, variants=("baseline", "tail_batching"),
        extra_prompts=prompts[3:], extra_labels=labels[3:], launch_ratio=2.0,
    )  # fmt: skip
    tail = report["variants"]["tail_batching"]
    stats, groups = tail["stats"], tail["groups"]
    assert (stats["prompts_launched"], stats["prompts_kept"]) == (6, 3)
    assert sorted(tail["kept_prompts"]) == [i for i, g in enumerate(groups) if g["kept"]]
    for group in groups:
        assert len(group["lengths"]) == N and group["kept"] in ([], list(range(N)))
        if not group["kept"]:  # aborted: never scored
            assert group["rewards"] == []
    # The kept groups are the first to complete; an aborted group ran longer, up to the moment of the abort.
    assert stats["longest_request"] >= stats["oracle_longest_request"] == max(max(g["lengths"]) for g in groups if g["kept"])
    generated = sum(sum(g["lengths"]) for g in groups)
    assert (stats["tokens_generated"], stats["tokens_wasted"]) == (generated, generated - stats["tokens_kept"])
    assert stats["tokens_wasted"] == sum(sum(g["lengths"]) for g in groups if not g["kept"])
    assert stats["tokens_generated"] == stats["engine_tokens_generated"]  # vLLM's own count, aborted ones included
    table = rollout_report.format_table(dict(report, meta={"model": "tiny", "n": N}))
    assert "prompts launched / kept" in table and "6/3" in table and "3/3" in table
    with pytest.raises(ValueError, match=r"tail_batching launches ceil\(2.0 x 3\) = 6 prompts but only 4"):
        rollout.run_benchmark(
            darts_engine, tokenizer, prompts[:3], labels[:3], n=N, max_tokens=MAX_TOKENS, max_length=512,
            progress=False, variants=("tail_batching",), extra_prompts=prompts[3:4], launch_ratio=2.0,
        )  # fmt: skip


def test_recorded_traces_leave_the_tail_batching_arm_out(tmp_path):
    # Its kept groups are the fastest of a race and its aborted ones partial: the sim must not pool them.
    group = {"lengths": [3, 5], "truncated": [False, False], "aborted": [False, False], "kept": [0, 1], "rewards": []}
    aborted = dict(group, aborted=[True, True], kept=[])
    report = {
        "variants": {
            "baseline": {"path": "generate_responses", "groups": [group]},
            "tail_batching": {"path": "generate_tail_group", "groups": [dict(group, lengths=[1, 1]), aborted]},
        }
    }
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    (prompt,) = load_recorded(path)
    assert sorted(prompt.pool) == [(3, False), (5, False)]


def test_summarize_on_a_hand_computed_run():
    # Two prompts, n = 2, shortest-only plans of 3 candidates (lengths, truncated, aborted, kept by index):
    #   prompt 0: lengths 4, 9, 6; candidate 1 aborted at 9 (partial), kept 0 and 2 -> valid finishes 4, 6
    #   prompt 1: lengths 5, 12, 12; candidate 2 truncated at the cap 12, kept 0 and 1 -> valid finishes 5, 12
    run = {
        "wall_s": 2.0,
        "engine_tokens_generated": 48,
        "engine_iterations": 15,
        "groups": [
            {"lengths": [4, 9, 6], "truncated": [False] * 3, "aborted": [False, True, False], "kept": [0, 2],
             "rewards": [1.0, None, 0.0]},
            {"lengths": [5, 12, 12], "truncated": [False, False, True], "aborted": [False] * 3, "kept": [0, 1],
             "rewards": [0.0, 1.0, None]},
        ],
    }  # fmt: skip
    stats = rollout_report.summarize(run, n=2, shortest_only=True)
    # Generated 4+9+6 + 5+12+12 = 48; kept 4+6 + 5+12 = 27; wasted 9 + 12 = 21.
    assert (stats["tokens_generated"], stats["tokens_kept"], stats["tokens_wasted"]) == (48, 27, 21)
    # The longest request, 12. Oracle per prompt: the 2nd shortest valid finish, 6 and 12 -> 12.
    assert (stats["longest_request"], stats["prompt_oracle_steps"], stats["oracle_longest_request"]) == (12, [6, 12], 12)
    assert (stats["engine_iterations"], stats["engine_tokens_generated"]) == (15, 48)  # passed through as counted
    # Kept lengths 4, 6, 5, 12: mean 27/4 = 6.75, nearest-rank p50 = 2nd of (4, 5, 6, 12) = 5, p90 = 4th = 12.
    assert stats["kept_length"] == {"mean": 6.75, "p50": 5.0, "p90": 12.0, "max": 12.0}
    # max/median per group: all (9/6 = 1.5, 12/12 = 1.0) -> 1.25; kept (6/5 = 1.2, 12/8.5) -> (1.2 + 24/17) / 2.
    assert stats["max_median_ratio_all"] == 1.25
    assert stats["max_median_ratio_kept"] == pytest.approx((1.2 + 24 / 17) / 2, rel=1e-12)
    assert (stats["aborted"], stats["truncated"], stats["underfilled_groups"]) == (1, 1, 0)
    assert stats["kept_reward_mean"] == 0.5 and stats["tokens_per_s"] == 24.0  # rewards 1, 0, 0, 1; 48 / 2 s
    # The dual-end oracle is each prompt's longest candidate: 9 and 12.
    assert rollout_report.summarize(run, n=2, shortest_only=False)["prompt_oracle_steps"] == [9, 12]


def test_ratios_vs_baseline_on_hand_computed_figures():
    def stats(iterations, longest, oracle, wall, generated, kept_mean):
        return {"engine_iterations": iterations, "longest_request": longest, "oracle_longest_request": oracle,
                "wall_s": wall, "tokens_generated": generated, "kept_length": {"mean": kept_mean}}  # fmt: skip

    figures = {"baseline": stats(80, 40, 40, 8.0, 100, 20.0), "dual_end": stats(60, 50, 45, 6.0, 125, 15.0)}
    ratios = rollout_report.ratios_vs_baseline(figures)
    # 60/80, 50/40, 45/40, 6/8, 125/100, 15/20.
    assert ratios["dual_end"] == {
        "engine_iterations": 0.75, "longest_request": 1.25, "oracle_longest_request": 1.125, "wall_s": 0.75,
        "tokens_generated": 1.25, "kept_length_mean": 0.75,
    }  # fmt: skip


def test_bad_arguments_fail_before_any_work():
    parser = rollout.build_parser()
    with pytest.raises(ValueError, match="--n=1 is below 2"):
        rollout.check_args(parser.parse_args(["--n", "1"]))
    with pytest.raises(ValueError, match="--max-tokens=0 is not positive"):
        rollout.check_args(parser.parse_args(["--max-tokens", "0"]))
    with pytest.raises(ValueError, match="is not a file"):
        rollout.check_args(parser.parse_args(["--prompts", "/nonexistent.jsonl"]))
    with pytest.raises(ValueError, match="launch_ratio=0.5 is below 1.0"):
        rollout.check_args(parser.parse_args(["--tail-launch-ratio", "0.5"]))
    assert rollout.build_parser().parse_args([]).variants == ["baseline", "shortest_only", "dual_end", "tail_batching"]


def test_prompt_file_needs_a_prompt_field(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "a", "answer": 3}\n\n{"prompt": "b"}\n')
    assert rollout.load_prompts(good) == (["a", "b"], ["3", ""])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1 has no string 'prompt' field"):
        rollout.load_prompts(bad)


# ---------------------------------------------------------------------------------------------------- built-in tasks


def test_problems_are_deterministic_and_labelled():
    from openrlhf_darts.bench.tasks import ANSWER_INSTRUCTION, make_problems

    first, again = make_problems(20, seed=3), make_problems(20, seed=3)
    assert first == again and first != make_problems(20, seed=4)
    assert all(p["prompt"].endswith(ANSWER_INSTRUCTION) and p["answer"].lstrip("-").isdigit() for p in first)
    with pytest.raises(ValueError, match="num=0"):
        make_problems(0)


def test_extract_answer_prefers_the_explicit_forms():
    from openrlhf_darts.bench.tasks import extract_answer

    assert extract_answer("3 + 4 = 7, so\nAnswer: 1,200") == "1200"  # explicit line beats the last number rule
    assert extract_answer("maybe 5 \\boxed{12.0} then 9") == "12"  # boxed beats everything; 12.0 -> 12
    assert extract_answer("#### 42\nthe answer is 41") == "42"
    assert extract_answer("we get 3 and then 8.") == "8"  # fallback: last number
    assert extract_answer("no digits here") is None


def test_reward_func_scores_the_response_only():
    import torch

    from openrlhf_darts.bench.tasks import reward_func

    prompt = "Ava has 5 apples. Answer: <number>"
    # Sample 0 answers 7 (label 7 -> 1.0); sample 1 repeats the prompt's 5 but answers 6 (label 5 -> 0.0: the
    # prompt's numbers do not count); sample 2 states no number (0.0, answered 0.0).
    queries = [prompt + " she finds 2. Answer: 7", prompt + " Answer: 6", prompt + " I do not know"]
    out = reward_func(queries, [prompt] * 3, ["7", "5", "3"])
    assert set(out) == {"rewards", "scores", "extra_logs"}
    assert torch.equal(out["rewards"], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(out["extra_logs"]["answered"], torch.tensor([1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="2 queries, 1 prompts and 1 labels"):
        reward_func(["a", "b"], ["a"], ["1"])
