"""Task selection (`bench.tasks`: built-in problems or a reasoning-gym dataset) and reasoning-gym's scorer as the
reward, scored through upstream's real `SingleTurnAgentExecutor` from worker threads (`upstream.score_like_engine`),
plus the `--task` flag of the rollout benchmark and of the local mode (parsing and the prompt file they write; no
engine).
"""

import json

import pytest

from openrlhf_darts.bench import gym_tasks, rollout, tasks

pytestmark = [pytest.mark.contract, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def upstream():
    from openrlhf_darts import upstream

    return upstream


def _score(upstream, task, cases):
    """Rewards and extra_logs for [(response, label), ...] of ``task``, scored as an engine actor scores them."""
    executor = upstream.reward_file_executor(tasks.reward_file(task))
    prompt = "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    results = upstream.score_like_engine(
        executor, [prompt + r for r, _ in cases], [prompt] * len(cases), [l for _, l in cases]
    )
    return [float(r["rewards"]) for r in results], [{k: float(v) for k, v in r["extra_logs"].items()} for r in results]


# ---- generation -----------------------------------------------------------------------------------------------------


def test_pinned_version_is_installed():
    import importlib.metadata

    assert importlib.metadata.version("reasoning-gym") == gym_tasks.REASONING_GYM_VERSION == "0.1.25"


def test_gsm_symbolic_is_deterministic_and_is_reasoning_gyms_own_problems():
    import reasoning_gym

    first = tasks.task_problems("gsm_symbolic", 8, seed=0)
    assert first == tasks.task_problems("gsm_symbolic", 8, seed=0)
    assert [p["messages"][1]["content"] for p in first] != [
        p["messages"][1]["content"] for p in tasks.task_problems("gsm_symbolic", 8, seed=1)
    ]
    # Oracle: the library itself, called directly with the same seed and size.
    direct = reasoning_gym.create_dataset("gsm_symbolic", seed=0, size=8)
    for index, problem in enumerate(first):
        system, user = problem["messages"]
        assert (system["role"], user["role"]) == ("system", "user")
        assert "<answer>" in system["content"] and user["content"] == direct[index]["question"]
        assert json.loads(problem["label"]) == {
            "reasoning_gym": "gsm_symbolic", "seed": 0, "size": 8, "index": index, "answer": direct[index]["answer"]
        }  # fmt: skip
    # Pinned by hand for reasoning-gym 0.1.25 (a version change that moves the problems fails here):
    # 2 weeks x 6 days = 12 days a month, x 12 months = 144 days, x 195 = 28,080.
    assert first[0]["messages"][1]["content"].startswith("A carpenter works for 2 weeks every month and for 6 days")
    assert json.loads(first[0]["label"])["answer"] == "28080"


def test_builtin_task_is_the_built_in_problems():
    builtin = tasks.task_problems("builtin", 5, seed=3)
    assert builtin == [
        {"messages": [{"role": "user", "content": p["prompt"]}], "label": p["answer"]}
        for p in tasks.make_problems(5, 3)
    ]
    assert tasks.reward_file("builtin") == tasks.__file__
    assert tasks.reward_file("gsm_symbolic") == gym_tasks.__file__


def test_unknown_task_and_bad_counts_fail_with_the_fix():
    with pytest.raises(ValueError, match=r"--task='gsm8k' is not a task; pass builtin or a reasoning-gym dataset"):
        tasks.check_task("gsm8k")
    with pytest.raises(ValueError, match="count=0"):
        tasks.task_problems("gsm_symbolic", 0, seed=0)
    with pytest.raises(ValueError, match="seed=-1"):
        tasks.task_problems("gsm_symbolic", 2, seed=-1)


# ---- the scorer as the reward ---------------------------------------------------------------------------------------


def test_gsm_symbolic_scorer_as_reward_through_upstreams_executor(upstream):
    (problem,) = tasks.task_problems("gsm_symbolic", 1, seed=0)
    label, answer = problem["label"], json.loads(problem["label"])["answer"]
    wrong = str(int(answer) + 1)
    rewards, logs = _score(
        upstream,
        "gsm_symbolic",
        [
            (f"So the total is {answer}.\n<answer>{answer}</answer>", label),  # right: 1.0
            (f"<answer>{answer}</answer> or rather <answer>{wrong}</answer>", label),  # the last tag counts: 0.01
            (f"The answer is {answer}.", label),  # no answer tag: 0.0 (reasoning-gym's protocol)
        ],
    )
    # gsm_symbolic's score_answer: 1.0 for the right number, 0.01 for another number, 0.0 without an answer.
    assert rewards == pytest.approx([1.0, 0.01, 0.0])
    assert [log["accuracy"] for log in logs] == [1.0, 0.0, 0.0]
    assert [log["answered"] for log in logs] == [1.0, 1.0, 0.0]


@pytest.mark.parametrize("task", ["gsm_symbolic", "basic_arithmetic", "chain_sum"])
def test_every_entrys_own_answer_scores_1_and_the_prompt_does_not_count(upstream, task):
    problems = tasks.task_problems(task, 4, seed=7)
    right = [(f"<answer>{json.loads(p['label'])['answer']}</answer>", p["label"]) for p in problems]
    rewards, _ = _score(upstream, task, right + [("no tag", p["label"]) for p in problems])
    assert rewards == [1.0] * 4 + [0.0] * 4


def test_a_label_from_another_problem_set_fails_loudly(upstream):
    (problem,) = tasks.task_problems("gsm_symbolic", 1, seed=0)
    forged = json.loads(problem["label"])
    forged["answer"] = "1"  # not what the entry regenerates to (28080)
    with pytest.raises(ValueError, match="regenerates an entry with answer '28080'"):
        _score(upstream, "gsm_symbolic", [("<answer>1</answer>", json.dumps(forged))])
    with pytest.raises(ValueError, match="is not a reasoning-gym label"):
        _score(upstream, "gsm_symbolic", [("<answer>1</answer>", "28080")])


# ---- the --task flags -----------------------------------------------------------------------------------------------


def test_rollout_bench_task_flag():
    parser = rollout.build_parser()
    assert parser.parse_args([]).task == "builtin"
    rollout.check_args(parser.parse_args(["--task", "gsm_symbolic"]))
    with pytest.raises(ValueError, match="--task='nope' is not a task"):
        rollout.check_args(parser.parse_args(["--task", "nope"]))
    with pytest.raises(ValueError, match="both choose the prompts"):
        rollout.check_args(parser.parse_args(["--task", "gsm_symbolic", "--prompts", __file__]))


def test_rollout_bench_renders_the_task_through_the_chat_template(tokenizer):
    prompts, labels = rollout.task_prompts(tokenizer, "gsm_symbolic", 3, seed=0)
    problems = tasks.task_problems("gsm_symbolic", 3, seed=0)
    assert labels == [p["label"] for p in problems]
    for prompt, problem in zip(prompts, problems):
        assert prompt == tokenizer.apply_chat_template(problem["messages"], tokenize=False, add_generation_prompt=True)
        assert problem["messages"][1]["content"] in prompt and problem["messages"][0]["content"] in prompt


def test_local_mode_prompt_file_loads_through_upstreams_dataset_code(tmp_path, tokenizer):
    from argparse import Namespace

    from openrlhf.datasets.prompts_dataset import preprocess_data
    from openrlhf.datasets.utils import blending_datasets

    from openrlhf_darts.local import compare

    args = Namespace(task="gsm_symbolic", steps=2, prompts_per_step=2, seed=0, difficulty=None)
    path = tmp_path / "problems.jsonl"
    assert compare.write_task_problems(args, path) == tasks.reward_file("gsm_symbolic")
    # Upstream's loader for --data.prompt_dataset (a list-of-messages prompt column goes through `datasets`).
    strategy = Namespace(print=lambda *a: None, is_rank_0=lambda: False)
    rows = list(blending_datasets(str(path), None, strategy, seed=0))
    problems = tasks.task_problems("gsm_symbolic", 4, seed=0)
    assert len(rows) == 4
    for row, problem in zip(rows, problems):
        # Upstream's own preprocessing (--data.input_key prompt --data.label_key label --data.apply_chat_template).
        prompt, label = preprocess_data(row, None, "prompt", "label", tokenizer.apply_chat_template)
        assert label == problem["label"]
        assert prompt == tokenizer.apply_chat_template(problem["messages"], tokenize=False, add_generation_prompt=True)
    with pytest.raises(ValueError, match="--difficulty=easy applies to --task builtin only"):
        compare.write_task_problems(Namespace(**{**vars(args), "difficulty": "easy"}), path)
    builtin = Namespace(task="builtin", steps=1, prompts_per_step=3, seed=0, difficulty=None)
    assert compare.write_task_problems(builtin, path) == tasks.reward_file("builtin")
    assert all(isinstance(json.loads(line)["prompt"], str) for line in path.read_text().splitlines())
