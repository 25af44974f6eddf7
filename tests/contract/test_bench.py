"""The rollout benchmark (openrlhf_darts.bench.rollout) on the session's real tiny engine; well-formed output.

A benchmark, not a timed test: only structure and counting invariants are checked, never speed.
"""

import json

import pytest
from conftest import stop_token_ids

from openrlhf_darts.bench import rollout
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
    return report, rollout.write_outputs(report, out)


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
        generated = sum(sum(g["lengths"]) for g in groups)
        kept = sum(g["lengths"][j] for g in groups for j in g["kept"])
        assert (stats["tokens_generated"], stats["tokens_kept"]) == (generated, kept)
        assert stats["tokens_generated"] >= stats["tokens_kept"]
        assert stats["tokens_wasted"] == generated - kept
        assert stats["longest_request"] == max(max(g["lengths"]) for g in groups)
        assert stats["longest_request"] >= stats["oracle_longest_request"]
        # vLLM's own iteration count: every token of the longest request needs an iteration of its own, and every
        # counted iteration sampled at least one token.
        assert stats["longest_request"] <= stats["engine_iterations"] <= stats["tokens_generated"]
        assert stats["all_admitted"]
        if name != "shortest_only":
            # Nothing is aborted, so the longest request is exactly the batch's oracle.
            assert stats["aborted"] == 0
            assert stats["longest_request"] == stats["oracle_longest_request"]
    assert report["variants"]["baseline"]["stats"]["tokens_wasted"] == 0
    assert report["ratios_vs_baseline"]["baseline"]["engine_iterations"] == 1.0


def test_bad_arguments_fail_before_any_work():
    parser = rollout.build_parser()
    with pytest.raises(ValueError, match="--n=1 is below 2"):
        rollout.check_args(parser.parse_args(["--n", "1"]))
    with pytest.raises(ValueError, match="--max-tokens=0 is not positive"):
        rollout.check_args(parser.parse_args(["--max-tokens", "0"]))
    with pytest.raises(ValueError, match="is not a file"):
        rollout.check_args(parser.parse_args(["--prompts", "/nonexistent.jsonl"]))


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
