"""The training-dynamics benchmark (bench.dynamics) end to end at toy size: 2 arms x 1 seed x 2 steps.

The benchmark runs in a subprocess (each of its runs starts its own local Ray cluster, like `local.train`), on the tiny
random model that stops at varied lengths and the built-in two-pattern problems. The assertions compare the report
with what the runs themselves wrote (`steps.jsonl`: the status dicts; `evals.jsonl`: every evaluation sample) and with
the engine's own counts. Nothing here asserts how training turned out.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.contract, pytest.mark.timeout(1500)]

ARMS, STEPS, PROMPTS, N, EVAL_SIZE, EVAL_SAMPLES = ("baseline", "darts_uniform"), 2, 4, 4, 6, 2


@pytest.fixture(scope="module")
def bench(tmp_path_factory, stopping_model_path):
    out = tmp_path_factory.mktemp("dynamics")
    command = [
        sys.executable, "-m", "openrlhf_darts.bench.dynamics", "--arms", ",".join(ARMS), "--seeds", "1",
        "--steps", str(STEPS), "--eval-every", "1", "--prompts-per-step", str(PROMPTS), "--n", str(N),
        "--eval-size", str(EVAL_SIZE), "--eval-samples", str(EVAL_SAMPLES), "--max-new-tokens", "24",
        "--max-len", "512", "--lr", "1e-3", "--model", stopping_model_path, "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=1400)
    assert done.returncode == 0, f"benchmark failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return json.loads((out / "report.json").read_text()), out, done.stdout


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_per_step_figures_are_the_runs_status_dicts(bench):
    from openrlhf_darts.bench.dynamics_report import OPTIONAL_STEP_FIGURES, STEP_FIGURES

    report, _, _ = bench
    for arm in ARMS:
        run = report["arms"][arm]["runs"]["0"]
        statuses = _lines(Path(run["run_dir"]) / "steps.jsonl")
        assert [s["step"] for s in statuses] == [r["step"] for r in run["steps"]] == [1, 2]
        for row, status in zip(run["steps"], statuses):
            for name, key in STEP_FIGURES.items():
                assert row[name] == status[key], (arm, row["step"], name)
            for name, key in OPTIONAL_STEP_FIGURES.items():
                assert row.get(name) == status.get(key), (arm, row["step"], name)
            assert row["tokens_wasted"] == status["local/candidate_tokens"] - status["local/kept_tokens"]


def test_length_push_agrees_with_upstreams_reward_spread(bench):
    # Oracle: upstream's own rollout stats over the same kept samples. Where every kept reward is equal (upstream's
    # reward std 0), no group has an advantage, so nothing is pushed; a step with mixed groups has a reward spread.
    report, _, _ = bench
    for arm in ARMS:
        run = report["arms"][arm]["runs"]["0"]
        for row, status in zip(run["steps"], _lines(Path(run["run_dir"]) / "steps.jsonl")):
            assert 0.0 <= row["mixed_groups"] <= 1.0
            if status["rollout/reward_std"] == 0.0:
                assert row["mixed_groups"] == 0.0 and row["length_push"] == 0.0 and "length_push_mixed" not in row
            if row["mixed_groups"] > 0:
                assert status["rollout/reward_std"] > 0 and "length_push_mixed" in row
                assert row["length_push"] == pytest.approx(row["length_push_mixed"] * row["mixed_groups"])


def test_step_figures_agree_with_independent_counts(bench):
    report, _, _ = bench
    for arm in ARMS:
        for row, status in zip(report["arms"][arm]["runs"]["0"]["steps"], _lines(
            Path(report["arms"][arm]["runs"]["0"]["run_dir"]) / "steps.jsonl"
        )):  # fmt: skip
            # Candidates per step: 4 prompts x n = 4 for the baseline; x ceil(1.25 * 4) = 5 for uniform DARTS, which
            # aborts nothing (L = 1), so every request finishes in the engine: vLLM's finished-request count agrees.
            candidates = PROMPTS * (N if arm == "baseline" else 5)
            assert row["candidates"] == row["finished_requests"] == candidates
            assert status["rollout/num_samples"] == PROMPTS * N  # exactly n kept per prompt
            # The engine needs an iteration per token of its longest request, and each counted iteration sampled
            # at least one token.
            assert row["finished_length_max"] <= row["engine_iterations"] <= row["tokens_generated"]
            if arm == "baseline":
                assert row["tokens_generated"] == row["tokens_kept"] and row["tokens_wasted"] == 0
            else:  # the DARTS metrics, computed from the group outcomes by metrics.outcome_metrics
                assert row["tokens_generated"] == status["darts/tokens_generated"]
                assert row["tokens_kept"] == status["darts/tokens_kept"]


def test_evaluation_never_used_redundancy(bench):
    report, _, _ = bench
    for arm in ARMS:
        run = report["arms"][arm]["runs"]["0"]
        records = _lines(Path(run["run_dir"]) / "evals.jsonl")
        assert [r["step"] for r in records] == [e["step"] for e in run["evals"]] == [0, 1, 2]
        for record, summary in zip(records, run["evals"]):
            assert record["group_outcomes"] == 0  # no generate_group call: a DARTS group always leaves an outcome
            for mode, per_prompt in (("greedy", 1), ("sampled", EVAL_SAMPLES)):
                rows = record[mode]
                # Each held-out prompt answered exactly `per_prompt` times, and the engine finished exactly that many
                # requests (vLLM's count): no surplus candidates were launched.
                assert sorted(rows["prompt"]) == sorted(list(range(EVAL_SIZE)) * per_prompt)
                assert rows["finished_requests"] == EVAL_SIZE * per_prompt
                assert summary[mode]["patterns"]["all"]["samples"] == EVAL_SIZE * per_prompt
                # Built-in held-out set: half Pattern I, half Pattern II.
                assert summary[mode]["patterns"]["I"]["prompts"] == summary[mode]["patterns"]["II"]["prompts"] == 3
                accuracy = sum(r == 1.0 for r in rows["reward"]) / len(rows["reward"])
                assert summary[mode]["patterns"]["all"]["accuracy"] == pytest.approx(accuracy)


def test_evaluation_sends_the_held_out_set_in_one_call(bench):
    # Oracle: vLLM's own iteration count. Upstream's generate_eval_samples sends PROMPTS prompts per call and waits for
    # each call, so the EVAL_SIZE = 6 held-out prompts would go as 4 + 2, one call after the other: at least the
    # longest answer of one call plus the longest of the other. The starting model's greedy answers all run to the
    # cap (24 tokens), so that is 48 iterations; one call takes 24 plus the few by which the requests' arrivals at the
    # engine are staggered.
    report, _, _ = bench
    assert EVAL_SIZE > PROMPTS
    for arm in ARMS:
        greedy = _lines(Path(report["arms"][arm]["runs"]["0"]["run_dir"]) / "evals.jsonl")[0]["greedy"]
        assert greedy["length"] == [24] * EVAL_SIZE
        assert greedy["iterations"] < 2 * 24


def test_outputs_and_summary(bench):
    report, out, stdout = bench
    for name in ("lengths.png", "accuracy.png", "cumulative.png", "shaping.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "summary.txt").read_text().strip() in stdout
    ratios = report["summary"]["vs_baseline"]
    assert ratios["baseline"]["cumulative_engine_iterations"]["mean"] == 1.0
    cumulative = sum(s["engine_iterations"] for s in report["arms"]["darts_uniform"]["runs"]["0"]["steps"])
    base = sum(s["engine_iterations"] for s in report["arms"]["baseline"]["runs"]["0"]["steps"])
    assert math.isclose(ratios["darts_uniform"]["cumulative_engine_iterations"]["mean"], cumulative / base)
    # Same seed, same starting policy, same engine seed: the two arms' step-0 evaluations are the same samples.
    first = [report["arms"][a]["runs"]["0"]["evals"][0]["greedy"]["patterns"]["all"]["accuracy"] for a in ARMS]
    assert first[0] == first[1]
    assert report["arms"]["darts_uniform"]["arm_flags"][:1] == ["--darts.enable"]
    assert report["arms"]["baseline"]["arm_flags"] == []


# ---------------------------------------------------------------------------- arms, inputs and figures, without Ray


def test_arm_flags_at_n_8():
    from openrlhf_darts.bench.dynamics import arm_flags

    assert arm_flags("baseline", 8) == []
    # shortest-only: ceil(1.5 * 8) = 12 candidates for every prompt; uniform DARTS: ceil(1.25 * 8) = 10, L = 1.
    assert arm_flags("shortest_only", 8)[-4:] == ["--darts.min_candidates", "12", "--darts.max_candidates", "12"]
    uniform = arm_flags("darts_uniform", 8)
    assert uniform[-4:] == ["--darts.min_candidates", "10", "--darts.max_candidates", "10"]
    assert "--darts.tail_prune" in uniform and uniform[uniform.index("--darts.tail_prune") + 1] == "off"
    # adaptive: the paper's bounds [n, 2n] = [8, 16] and an average of 1.25 n = 10.
    adaptive = arm_flags("darts_adaptive", 8)
    assert adaptive[-6:] == ["--darts.min_candidates", "8", "--darts.max_candidates", "16", "--darts.avg_candidates",
                             "10.0"]  # fmt: skip
    assert arm_flags("darts_uniform_long_end", 8)[-2:] == ["--darts.truncated", "long_end"]
    # the kept set's width probes: L = 3 of ceil(1.25 * 8) = 10 and of 2 * 8 = 16 candidates.
    l3, wide = arm_flags("darts_l3_long_end", 8), arm_flags("darts_wide_l3_long_end", 8)
    assert l3[l3.index("--darts.num_long") + 1] == wide[wide.index("--darts.num_long") + 1] == "3"
    assert l3[-6:-2] == ["--darts.min_candidates", "10", "--darts.max_candidates", "10"]
    assert wide[-6:] == ["--darts.min_candidates", "16", "--darts.max_candidates", "16", "--darts.truncated",
                         "long_end"]  # fmt: skip
    # tail batching: DARTS off, ceil(1.25 B) prompts launched, aborted prompts back in front of the next step.
    assert arm_flags("tail_batching", 8) == [
        "--tail_batching.enable", "--tail_batching.launch_ratio", "1.25", "--tail_batching.aborted_prompts", "defer"
    ]  # fmt: skip


def test_arms_and_sizes_are_checked_before_any_run():
    from openrlhf_darts.bench.dynamics import build_parser, check_args, check_arms
    from openrlhf_darts.config import flag_table

    with pytest.raises(ValueError, match="--arms fastest unknown"):
        check_arms(["baseline", "fastest"])
    with pytest.raises(ValueError, match="must name each arm once"):
        check_arms(["baseline", "baseline"])
    if "--darts.truncated" in {row[0] for row in flag_table()}:
        check_arms(["darts_uniform_long_end"])  # the fidelity issue's flag exists: the arm is wired
    else:
        with pytest.raises(ValueError, match="needs --darts.truncated long_end"):
            check_arms(["darts_uniform_long_end"])
    parser = build_parser()
    with pytest.raises(ValueError, match="--steps 25 is not a multiple of --eval-every 10"):
        check_args(parser.parse_args(["--arms", "baseline", "--steps", "25"]))
    with pytest.raises(ValueError, match="--n 1 is below 2"):
        check_args(parser.parse_args(["--arms", "baseline", "--n", "1"]))
    with pytest.raises(ValueError, match="--arms darts_l3 keeps 3 candidates from the long end, which leaves none"):
        check_args(parser.parse_args(["--arms", "baseline,darts_l3", "--n", "3"]))
    check_args(parser.parse_args(["--arms", "baseline,darts_l3", "--n", "4"]))  # K = 1, L = 3
    with pytest.raises(ValueError, match="--task='gsm8k' is not a task"):
        check_args(parser.parse_args(["--arms", "baseline", "--task", "gsm8k"]))
    with pytest.raises(ValueError, match="--train-prompts mine.jsonl with --task gsm_symbolic"):
        check_args(parser.parse_args(["--arms", "baseline", "--task", "gsm_symbolic", "--train-prompts", "mine.jsonl"]))
    with pytest.raises(ValueError, match="--mix pattern1 chooses the built-in task's problems; with --task gsm_sym"):
        check_args(parser.parse_args(["--arms", "baseline", "--mix", "pattern1", "--task", "gsm_symbolic"]))
    with pytest.raises(ValueError, match="--mix pattern1 chooses the built-in task's problems"):
        check_args(parser.parse_args(["--arms", "baseline", "--mix", "pattern1", "--eval-prompts", "mine.jsonl"]))
    with pytest.raises(ValueError, match="--mix two_pattern chooses the built-in task's problems"):  # not a default
        check_args(parser.parse_args(["--arms", "baseline", "--mix", "two_pattern", "--task", "gsm_symbolic"]))
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        parser.parse_args(["--mix", "lookups"])


def test_reasoning_gym_task_problems():
    from openrlhf_darts.bench import gym_tasks
    from openrlhf_darts.bench.dynamics import EVAL_SEED, TRAIN_SEED, gym_problems

    train, held_out = gym_problems("gsm_symbolic", 40, 8)
    assert len(train) == 40 and len(held_out) == 8
    assert {p["pattern"] for p in train + held_out} == {"gsm_symbolic"}
    # Chat messages (reasoning-gym's system prompt + the question), labelled for the task's own reward file, the
    # training and held-out sets from their own seeds, no held-out question among the training ones.
    assert [m["role"] for m in held_out[0]["prompt"]] == ["system", "user"]
    assert {json.loads(p["answer"])["seed"] for p in train} == {TRAIN_SEED}
    assert {json.loads(p["answer"])["seed"] for p in held_out} == {EVAL_SEED}
    assert not {p["prompt"][1]["content"] for p in held_out} & {p["prompt"][1]["content"] for p in train}
    assert held_out[0]["prompt"] == gym_tasks.make_problems("gsm_symbolic", 32, EVAL_SEED)[0]["messages"]


def test_problem_files_are_checked_line_by_line(tmp_path):
    from openrlhf_darts.bench.dynamics import load_problems

    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "a", "answer": 3, "pattern": "deep"}\n\n{"prompt": "b", "answer": "4"}\n')
    assert load_problems(good, "--eval-prompts") == [
        {"prompt": "a", "answer": "3", "pattern": "deep"},
        {"prompt": "b", "answer": "4", "pattern": "untagged"},
    ]
    for text, message in (
        ('{"prompt": "a"}\n', "good2.jsonl:1 needs a string 'prompt' and an 'answer'"),
        ("not json\n", "good2.jsonl:1 is not JSON"),
        ('{"prompt": "a", "answer": 1, "pattern": "all"}\n', "'all' and '/' are reserved"),
    ):
        (tmp_path / "good2.jsonl").write_text(text)
        with pytest.raises(ValueError, match=message):
            load_problems(tmp_path / "good2.jsonl", "--train-prompts")


def test_builtin_held_out_set_is_balanced_and_unseen():
    from openrlhf_darts.bench.dynamics import builtin_problems

    train, held_out = builtin_problems(400, 64)
    assert len(train) == 400 and len(held_out) == 64
    assert [p["pattern"] for p in held_out].count("II") == 32
    assert not {p["prompt"] for p in held_out} & {p["prompt"] for p in train}
    assert len({p["prompt"] for p in held_out}) == 64


def test_pattern1_mix_is_pattern_i_only_and_unseen():
    from openrlhf_darts.bench.dynamics import builtin_problems
    from openrlhf_darts.local.sft import LEVEL_PATTERN, model_dir_name

    train, held_out = builtin_problems(400, 64, "pattern1")
    assert len(train) == 400 and len(held_out) == 64 and len({p["prompt"] for p in held_out}) == 64
    assert {p["pattern"] for p in train} == {p["pattern"] for p in held_out} == {"I"}
    assert not {p["prompt"] for p in held_out} & {p["prompt"] for p in train}
    # Independent of builtin_problems: a lookup ("What is D?") or an arithmetic chain never appears in the mix.
    assert not any("What is" in p["prompt"] for p in train + held_out)
    assert LEVEL_PATTERN["lookup"] == "II"
    # The default mix is copy_count: copies (Pattern I) and counting (Pattern II), half each held out.
    train, held_out = builtin_problems(400, 64)
    assert (train, held_out) == builtin_problems(400, 64, "copy_count")
    assert not {p["prompt"] for p in held_out} & {p["prompt"] for p in train}
    assert [p["pattern"] for p in held_out].count("II") == 32
    assert all(("Then" in p["prompt"]) == (p["pattern"] == "II") for p in train + held_out)
    assert model_dir_name() == "tiny-verbose-2p" and model_dir_name("easy") == "tiny-verbose-easy"
    with pytest.raises(ValueError, match="difficulty='hard' is unknown"):
        model_dir_name("hard")


def test_interval_arithmetic():
    from openrlhf_darts.bench.dynamics_report import spread, wilson

    # Wilson 95% for 8/10, by hand: z = 1.96, z^2 = 3.8415; centre (0.8 + z^2/20) / (1 + z^2/10) = 0.71674; half width
    # z sqrt(0.8 * 0.2 / 10 + z^2 / 400) / 1.38415 = 0.22658 -> [0.4902, 0.9433].
    assert wilson(8, 10) == pytest.approx([0.4902, 0.9433], abs=1e-4)
    # Three seeds 0.8, 0.9, 1.0: sd 0.1, t(0.975, 2) = 4.3027, half width 4.3027 * 0.1 / sqrt(3) = 0.2484 -> the
    # interval [0.652, 1.148] holds 1: within the spread. 0.80, 0.82, 0.84: half width 0.0497 -> [0.770, 0.870].
    wide, narrow = spread([0.8, 0.9, 1.0], 1.0), spread([0.80, 0.82, 0.84], 1.0)
    assert wide["ci"] == pytest.approx([0.6516, 1.1484], abs=1e-4) and not wide["above_spread"]
    assert narrow["ci"] == pytest.approx([0.7703, 0.8697], abs=1e-4) and narrow["above_spread"]
    assert "ci" not in spread([0.9], 1.0)  # one seed: no spread to compare with


def test_evaluation_figures_by_hand():
    from openrlhf_darts.bench.dynamics_report import _pass_figures

    # Two samples for each of three prompts: prompt 0 right when long (10 wrong, 30 right), prompt 1 always right at
    # 5 tokens, prompt 2 right when short (20 right, 60 wrong).
    rows = {"prompt": [0, 0, 1, 1, 2, 2], "length": [10, 30, 5, 5, 20, 60], "reward": [0, 1, 1, 1, 1, 0],
            "truncated": [False] * 6}  # fmt: skip
    figures = _pass_figures(rows, [True] * 6)
    assert figures["accuracy"] == pytest.approx(4 / 6) and figures["length_mean"] == pytest.approx(130 / 6)
    assert figures["length_p90"] == 60  # nearest rank: ceil(0.9 * 6) = 6th of 5, 5, 10, 20, 30, 60
    # Centred on each prompt: lengths -10, 10 | 0, 0 | -20, 20 and correctness -0.5, 0.5 | 0, 0 | 0.5, -0.5:
    # sum of products 5 + 5 - 10 - 10 = -10, over sqrt(1000 * 1) -> -0.3162.
    assert figures["within_prompt_corr"] == pytest.approx(-10 / math.sqrt(1000))
    assert figures["mixed_groups"] == pytest.approx(2 / 3) and figures["right_longer_share"] == 0.5


def test_reuse_finished_reads_the_runs_back(bench):
    """--reuse-finished: the same benchmark again reads its finished runs back instead of training them, in this
    process (whose Ray state it leaves as it was: training would start a cluster, or refuse to run inside an
    initialized one), and refuses a run folder whose flags differ from what it would pass."""
    import ray

    from openrlhf_darts.bench.dynamics import main

    report, out, _ = bench
    argv = [
        "--arms", "baseline", "--seeds", "1", "--steps", str(STEPS), "--eval-every", "1", "--prompts-per-step",
        str(PROMPTS), "--n", str(N), "--eval-size", str(EVAL_SIZE), "--eval-samples", str(EVAL_SAMPLES),
        "--max-new-tokens", "24", "--max-len", "512", "--lr", "1e-3", "--model", report["meta"]["args"]["model"],
        "--out", str(out), "--reuse-finished",
    ]  # fmt: skip
    initialized = ray.is_initialized()  # True when the session's Ray cluster fixture ran earlier in this process
    again = main(argv)
    assert ray.is_initialized() == initialized
    theirs, ours = report["arms"]["baseline"]["runs"]["0"], again["arms"]["baseline"]["runs"]["0"]
    assert (ours["steps"], ours["evals"], ours["wall_s"]) == (theirs["steps"], theirs["evals"], theirs["wall_s"])
    with pytest.raises(ValueError, match=r"runs/baseline/seed0 ran with other flags .*\['0.001', '0.002'\] differ"):
        main([*argv[: argv.index("--lr") + 1], "2e-3", *argv[argv.index("--lr") + 2 :]])


def test_selection_push_applies_each_rule_to_one_set_of_step_zero_samples(tmp_path, stopping_model_path):
    # bench.selection_push at toy size: 4 held-out prompts x 8 samples of the starting policy, n = 4. Oracle: the
    # step-0 evaluation record it read (every sample, as the trainer wrote it) and the engine's finished-request count.
    from openrlhf_darts.bench.selection_push import SELECTIONS

    out = tmp_path / "push"
    command = [sys.executable, "-m", "openrlhf_darts.bench.selection_push", "--model", stopping_model_path,
               "--eval-size", "4", "--candidates", "8", "--n", "4", "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"selection_push failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    report = json.loads((out / "report.json").read_text())
    record = _lines(out / "sample" / "runs" / "baseline" / "seed0" / "evals.jsonl")[0]
    sampled = record["sampled"]
    assert record["step"] == 0 and record["group_outcomes"] == 0 and sampled["finished_requests"] == 4 * 8
    assert report["meta"]["prompts"] == len(report["per_prompt"]) == 4
    for prompt, figures in enumerate(report["per_prompt"]):
        assert set(figures) == set(SELECTIONS)
        lengths = [length for p, length in zip(sampled["prompt"], sampled["length"]) if p == prompt]
        assert figures["baseline"]["length_mean"] == pytest.approx(sum(lengths[:4]) / 4)  # the first n, as sampled
        # the 4 shortest of the first 6 (truncated ones, at the cap, only to fill) are no longer than the first 4
        assert figures["shortest_only"]["length_mean"] <= figures["baseline"]["length_mean"]
    assert (out / "selection_push.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "summary.txt").read_text().strip() in done.stdout
