"""Local mode end to end: a two-step DARTS GRPO run through upstream's own train_ppo_ray on the tiny model.

The run happens in a subprocess (`python -m openrlhf_darts.local.train`) because the local mode starts its own Ray
cluster sized to upstream's layout; this session's shared cluster must not be touched. The run writes one status
record per step (what upstream logs, plus the DARTS and local keys); the assertions read those records and the final
model upstream's `train()` saves.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.contract, pytest.mark.timeout(600)]

PROMPTS, N, STEPS = 4, 4, 2
# Deterministic reward with spread inside a group, so group_norm advantages are non-zero and the policy must move.
REWARD = """
import torch

def reward_func(queries, prompts, labels):
    r = torch.tensor([float(len(q) % 2 == 0) for q in queries])
    return {"rewards": r, "scores": r, "extra_logs": {}}
"""


DARTS_FLAGS = ("--darts.enable", "--darts.selection", "dual_end")


def local_command(root: Path, model_path: str, *extra, reward: bool = True, arm=DARTS_FLAGS) -> tuple[list[str], Path]:
    """The local-mode command of these tests (DARTS on, dual-end, unless `arm` says otherwise) and its run folder; `reward=False` leaves the
    reward to an AgentExecutor given in `extra`."""
    from openrlhf_darts.bench.tasks import make_problems

    data = root / "problems.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": p["prompt"], "label": p["answer"]}) + "\n" for p in make_problems(PROMPTS * STEPS, 0)
        )
    )
    reward_flags = []
    if reward:
        (root / "reward.py").write_text(REWARD)
        reward_flags = ["--reward.remote_url", str(root / "reward.py")]
    run_dir = root / "run"
    command = [
        sys.executable, "-m", "openrlhf_darts.local.train", "--run_dir", str(run_dir), "--sync_probe",
        "--actor.model_name_or_path", model_path,
        "--data.prompt_dataset", str(data), "--data.input_key", "prompt", "--data.label_key", "label",
        "--data.apply_chat_template", "--data.max_samples", str(PROMPTS * STEPS), "--data.max_len", "512",
        *reward_flags,
        "--rollout.batch_size", str(PROMPTS), "--rollout.n_samples_per_prompt", str(N),
        "--rollout.max_new_tokens", "24", "--rollout.micro_batch_size", str(N),
        "--train.batch_size", str(PROMPTS * N), "--train.micro_batch_size", str(N),
        "--algo.advantage.estimator", "group_norm", "--actor.adam.lr", "1e-2", "--actor.lr_warmup_ratio", "0",
        *arm, *extra,
    ]  # fmt: skip
    return command, run_dir


def _run(tmp_path_factory, stopping_model_path, *extra, arm=DARTS_FLAGS):
    command, run_dir = local_command(tmp_path_factory.mktemp("local_train"), stopping_model_path, *extra, arm=arm)
    done = subprocess.run(command, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, f"local run failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    records = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    return records, run_dir, stopping_model_path


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, stopping_model_path):
    return _run(tmp_path_factory, stopping_model_path)


def test_token_streaming_run_through_upstreams_trainer(tmp_path_factory, stopping_model_path):
    """`--darts.stream --darts.stream_tokens` through upstream's train_ppo_ray: the trainer attaches the streaming
    maker, chunks flow from the engine to the CPU scorers during generation, every cache is freed each step."""
    records, _, _ = _run(
        tmp_path_factory, stopping_model_path,
        "--darts.stream", "--darts.stream_tokens", "--darts.stream_chunk_tokens", "4",
        "--darts.min_candidates", "4", "--darts.max_candidates", "4",  # M'_i = n: every candidate streams
    )  # fmt: skip
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        assert record["rollout/num_samples"] == PROMPTS * N
        assert record["darts/stream_waves"] >= 1
        # With M'_i = n nothing is dropped: every streamed sample is finished from its chunks, none released.
        assert record["darts/stream_token_finished"] == record["darts/stream_token_samples"] > 0
        assert record["darts/stream_token_released"] == 0 and record["darts/stream_token_chunks"] > 0
        assert record["local/engine_unfinished_requests"] == 0


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def test_tail_batching_run_through_upstreams_trainer(tmp_path_factory, stopping_model_path):
    """The comparison arm (DARTS off) through upstream's train_ppo_ray: the trainer swaps in the tail-batching generator,
    the engine aborts whole groups. 8 prompts, B = 4, r = 1.5: step 1 launches 6, trains 4, defers 2; step 2 launches
    the 2 deferred + the last 2 fresh ones (4 <= B: nothing aborted) and ends the epoch."""
    records, _, _ = _run(
        tmp_path_factory, stopping_model_path, "--tail_batching.enable", "--tail_batching.launch_ratio", "1.5", arm=()
    )
    assert [r["step"] for r in records] == [1, 2]
    assert not any(key.startswith("darts/") for r in records for key in r)
    launched = [(r["tail_batching/prompts_launched"], r["tail_batching/prompts_resumed"]) for r in records]
    assert launched == [(6, 0), (4, 2)]
    assert [r["tail_batching/prompts_deferred"] for r in records] == [2, 0]
    assert [r["tail_batching/queue_size"] for r in records] == [2, 0]
    for record in records:
        assert record["rollout/num_samples"] == PROMPTS * N  # exactly B groups of n
        assert record["tail_batching/tokens_kept"] == record["local/response_tokens"]
        assert record["local/engine_unfinished_requests"] == 0
        # The local candidate figures (what bench.dynamics reads): n requests per launched prompt; those not cut
        # short by the abort are exactly the requests vLLM counted as finished during the rollout.
        assert record["local/candidates"] == N * record["tail_batching/prompts_launched"]
        finished = record["local/candidates"] - record["local/aborted_candidates"]
        assert finished == record["local/engine_finished_requests"]
        assert record["local/candidate_tokens"] == record["tail_batching/tokens_generated"]
        assert record["local/finished_length_max"] <= record["local/engine_iterations"]
    assert records[0]["tail_batching/wasted_tokens"] > 0 and records[1]["tail_batching/wasted_tokens"] == 0
    assert records[1]["local/aborted_candidates"] == 0  # 4 launched, B = 4: nothing aborted


def test_two_steps_logged_with_darts_metrics(local_run):
    records, _, _ = local_run
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        # Default fixed budget: 1.25 n = 5 candidates per prompt, 4 prompts -> 20 launched (spec 3(e)).
        assert record["darts/budget"] == 20
        assert record["darts/candidates_mean"] == 5.0
        # The token figures themselves are checked against vLLM's own counters in test_samples_generator.py and
        # test_rollout_actor.py; the kept tokens against the trained samples in the test below.
        assert record["darts/tokens_generated"] >= record["darts/tokens_kept"] > 0


def test_exactly_n_per_prompt_and_no_unfinished_requests(local_run):
    records, _, _ = local_run
    for record in records:
        # 4 prompts x n=4 kept = 16 samples reach upstream's advantage code, whatever was launched.
        assert record["rollout/num_samples"] == PROMPTS * N
        assert record["darts/tokens_kept"] == record["local/response_tokens"]
        assert record["local/engine_unfinished_requests"] == 0


def test_weights_changed_and_engine_serves_them(local_run):
    records, run_dir, initial = local_run
    before, after = _weights(initial), _weights(run_dir / "final_model")
    shared = [name for name in before if name in after]
    assert shared, f"no common tensor names: {sorted(before)} vs {sorted(after)}"
    changed = [name for name in shared if not (before[name] == after[name]).all()]
    assert changed, "no parameter changed after two GRPO steps with non-zero advantages"
    for record in records:
        # After each sync the engine scores the probe sequence like the policy actor does (both fp32): measured
        # 4.8e-7 at both steps (vLLM's prompt log-probs and HF's forward sum in different orders); 1e-5 is the fp32
        # tolerance the spec sets for such paths (DARTS_SPEC.md 3(g)), far below a step's change (0.3-0.65).
        assert record["local/sync_engine_policy_diff"] < 1e-5
    # Step 2's update (lr 1e-2, non-zero advantages) must move the engine's log-probs of the probe sequence.
    assert records[-1]["local/sync_engine_change"] > 1e-4


def test_easy_levels_and_their_verbose_targets():
    import random

    from openrlhf_darts.bench.tasks import extract_answer, make_problems
    from openrlhf_darts.local.sft import mixed_problems, verbose_target

    # The default level is the original task: problem 0 of seed 0 was "53 cookies, +18, buys 5 x 8" = 53+18+40 = 111
    # before max_ops existed, and max_ops=3 spelled out draws the same problems.
    assert make_problems(1, seed=0)[0]["answer"] == "111"
    assert make_problems(5, seed=0) == make_problems(5, seed=0, max_ops=3)
    for problem in make_problems(50, seed=1, max_ops=0):  # copy: the answer is the only number in the prompt
        assert "Then" not in problem["prompt"] and f" has {problem['answer']} " in problem["prompt"]
    for problem in make_problems(50, seed=1, max_ops=1):  # one step of at most 9 from the starting count
        start = int(problem["prompt"].split(" has ")[1].split()[0])
        assert problem["prompt"].count("Then") == 1 and 1 <= abs(int(problem["answer"]) - start) <= 9
    with pytest.raises(ValueError, match="max_ops=-1"):
        make_problems(3, max_ops=-1)
    # "easy" draws level 0 with weight 0.7: 400 draws have a binomial sd of sqrt(400 * 0.7 * 0.3) = 9.2, so the
    # copy count lies in 280 +- 40 (over 4 sd).
    easy = mixed_problems(400, seed=0, difficulty="easy")
    assert 240 <= sum("Then" not in p["prompt"] for p in easy) <= 320
    assert {p["pattern"] for p in easy} == {"I"}
    # Deterministic, and a prefix of a longer draw (levels and each level's problems are drawn in order).
    assert mixed_problems(20, seed=0, difficulty="easy") == easy[:20]
    assert mixed_problems(20, seed=1, difficulty="easy") != easy[:20]
    rng = random.Random(0)
    for problem in easy[:100]:  # every target parses back to its label through the reward's own extractor
        target = verbose_target(problem["prompt"], problem["answer"], rng)
        assert target.endswith(f"\nAnswer: {problem['answer']}") and extract_answer(target) == problem["answer"]
    with pytest.raises(ValueError, match="difficulty='hardest'"):
        mixed_problems(4, seed=0, difficulty="hardest")


def test_inside_a_ray_job_it_attaches_and_rejects_a_cluster_short_of_its_layout(
    ray_cluster, stopping_model_path, tmp_path
):
    """With RAY_ADDRESS set (inside a Ray job, as slurm_launch.sh's CPU mode runs it) local mode attaches to that
    cluster instead of starting its own, and first checks the cluster's labels: this session's cluster (conftest's
    labels) is short of the layout, so the run stops with the labels to use before creating any actor."""
    address = ray_cluster.get_runtime_context().gcs_address
    free_before = ray_cluster.available_resources()
    command = [
        sys.executable, "-m", "openrlhf_darts.local.train", "--run_dir", str(tmp_path / "run"),
        "--actor.model_name_or_path", stopping_model_path, "--data.prompt_dataset", str(tmp_path / "none.jsonl"),
        "--reward.remote_url", str(tmp_path / "reward.py"), "--algo.advantage.estimator", "group_norm",
        "--algo.kl.init_coef", "0.001",
    ]  # fmt: skip
    done = subprocess.run(
        command, env={**os.environ, "RAY_ADDRESS": address}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0
    assert f"local.train: {sys.executable}, attaching to the Ray cluster at RAY_ADDRESS={address}" in done.stdout
    # One engine, the policy and the reference actor (kl > 0): 3 GPU labels, and 3 + 2 CPU labels.
    total = ray_cluster.cluster_resources()  # the session cluster's labels (conftest), short of 5 CPU and 3 GPU
    assert total["CPU"] < 5 and total["GPU"] < 3
    assert (
        f"ValueError: the Ray cluster at RAY_ADDRESS={address} has {total['CPU']:g} CPU and {total['GPU']:g} GPU "
        "labels; upstream's layout of these flags needs 5 CPU and 3 GPU labels" in done.stderr
    ), done.stderr[-3000:]
    assert "ray start --num-cpus=5 --num-gpus=3" in done.stderr
    assert not (tmp_path / "run" / "steps.jsonl").exists()
    # The session's cluster is untouched: the attached driver took nothing.
    assert ray_cluster.available_resources().get("GPU") == free_before.get("GPU")


def test_lookup_problems_and_the_two_pattern_mix():
    import random
    import re

    from openrlhf_darts.bench.tasks import extract_answer, make_lookup_problems
    from openrlhf_darts.local.sft import lookup_hops, mixed_levels, mixed_problems, sft_target

    problems = make_lookup_problems(200, seed=3)
    assert problems == make_lookup_problems(200, seed=3) and problems != make_lookup_problems(200, seed=4)
    for problem in problems:
        sentences = re.findall(r"[^.?]+[.?]", problem["prompt"])
        defined = [s.split()[0] for s in sentences if " = " in s]
        values = [int(v) for v in re.findall(r" = (\d+)\.", " " + problem["prompt"])]
        # Default sizes: 1 + 2 distractor values, all different, each variable defined once; the answer is one of the
        # values (a guess among them is right 1 time in 3).
        assert len(defined) == len(set(defined)) and len(values) == len(set(values)) == 3
        assert int(problem["answer"]) in values
        hops, shortcut = lookup_hops(problem["prompt"], problem["answer"])
        # 2 or 3 references and the value they lead to, each copied verbatim from the prompt.
        assert len(hops) in (3, 4) and all(f" {hop}" in f" {problem['prompt']}" for hop in hops)
        assert hops[-1].endswith(f" = {problem['answer']}.") and shortcut == f"{hops[0][0]} = {problem['answer']}."
    with pytest.raises(ValueError, match="does not reach its label 999"):
        lookup_hops(problems[0]["prompt"], "999")
    with pytest.raises(ValueError, match="hops=\\(0,\\)"):
        make_lookup_problems(3, hops=(0,))

    # The two-pattern mix: half lookups (Pattern II); 400 draws, sd 10, so 200 +- 40.
    mix = mixed_problems(400, seed=0)
    assert all((p["pattern"] == "II") == (" = " in p["prompt"]) for p in mix)
    assert 160 <= sum(p["pattern"] == "II" for p in mix) <= 240
    rng = random.Random(0)
    # mixed_levels draws the same problems; its levels agree with the prompts' shape (a lookup defines variables).
    levels = mixed_levels(400, seed=0)
    assert [p for _, p in levels] == [{k: v for k, v in p.items() if k != "pattern"} for p in mix]
    assert all((level == "lookup") == (" = " in p["prompt"]) for level, p in levels)
    targets = [(p, sft_target("lookup", p, rng)) for p in mix if p["pattern"] == "II"]
    for problem, target in targets:
        assert extract_answer(target) == problem["answer"]
    # About half the lookup targets are written hop by hop (STEP_BY_STEP_SHARE = 0.5), the rest state the value.
    step_by_step = sum(target.count(" = ") > 1 for _, target in targets)
    assert 0.35 * len(targets) <= step_by_step <= 0.65 * len(targets)


def test_count_level_counts_one_at_a_time_to_the_label():
    import random
    import re

    from openrlhf_darts.bench.tasks import extract_answer, make_problems
    from openrlhf_darts.local.sft import count_steps, count_target, mixed_levels, mixed_problems

    # By hand: 47 + 3 counted up with the steps left, or stated at once.
    prompt = "Ava has 47 apples. Then Ava finds 3 more apples. How many apples does Ava have now?"
    assert count_steps(prompt, "50") == ("Start with 47 apples.", "47 + 3: 48 2, 49 1, 50 0.", "47 + 3 = 50.")
    prompt = "Ben has 12 coins. Then Ben gives 2 coins to a friend. How many coins does Ben have now?"
    assert count_steps(prompt, "10")[1] == "12 - 2: 11 1, 10 0."
    with pytest.raises(ValueError, match="label is 51"):
        count_steps("Ava has 47 apples. Then Ava finds 3 more apples. How many apples does Ava have now?", "51")
    with pytest.raises(ValueError, match="not a one-step addition or subtraction"):
        count_steps("Ava has 7 apples. Then Ava doubles the number of apples. How many apples does Ava have?", "14")

    rng = random.Random(0)
    counted = 0
    for problem in make_problems(200, seed=5, max_ops=1):
        start = int(problem["prompt"].split(" has ")[1].split()[0])
        _, body, _ = count_steps(problem["prompt"], problem["answer"])
        pairs = [tuple(map(int, pair.split())) for pair in body.split(": ")[1].rstrip(".").split(", ")]
        # Each step moves the running value by one towards the label and the steps left by one down to 0.
        values, left = [v for v, _ in pairs], [k for _, k in pairs]
        assert [abs(v - start) for v in values] == list(range(1, len(pairs) + 1))
        assert values[-1] == int(problem["answer"]) and left == list(range(len(pairs) - 1, -1, -1))
        target = count_target(problem["prompt"], problem["answer"], rng)
        assert extract_answer(target) == problem["answer"]
        counted += bool(re.search(r"\d: \d", target))
    assert 60 <= counted <= 140  # STEP_BY_STEP_SHARE = 0.5 of 200: sd 7

    # The copy_count mix: copy problems are Pattern I, count problems Pattern II, about half each.
    mix = mixed_levels(400, seed=0, difficulty="copy_count")
    assert {level for level, _ in mix} == {"copy", "count"}
    assert all(("Then" in p["prompt"]) == (level == "count") for level, p in mix)
    assert all(("Then" in p["prompt"]) == (p["pattern"] == "II") for p in mixed_problems(400, 0, "copy_count"))
    assert 160 <= sum(level == "count" for level, _ in mix) <= 240
