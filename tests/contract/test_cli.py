"""The training entry point `openrlhf_darts.cli.train_ppo_ray` and the example scripts, on the real upstream parser.

Upstream's `train()` needs CUDA model actors, so these tests stop right after parsing and validation: with
`OPENRLHF_DARTS_PARSE_ONLY=1` the entry prints the validated DARTS config and the parsed upstream args as JSON and
exits 0. Everything up to that point is the real path: upstream's `train_ppo_ray` script run by `runpy`, its own
parser with our group added, upstream's `hierarchize`, `DartsConfig.from_args`.
"""

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from openrlhf_darts.config import flag_table

pytestmark = [pytest.mark.contract, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "examples" / "scripts"
TRAIN_SCRIPTS = sorted(SCRIPTS.glob("train_*.sh"))
PAIRS = sorted({p.name.rsplit("_", 1)[0] for p in TRAIN_SCRIPTS})
UPSTREAM_MODULE = "openrlhf.cli.train_ppo_ray"
DARTS_MODULE = "openrlhf_darts.cli.train_ppo_ray"


def _script_command(script: Path, run_name: str | None = None) -> tuple[str, list[str]]:
    """(module, args) the script would run, printed by its DRY_RUN=1 mode."""
    env = {**os.environ, "DRY_RUN": "1"}
    if run_name is not None:
        env["RUN_NAME"] = run_name
    out = subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True, text=True).stdout
    module, *args = out.splitlines()
    return module, args


def _parse(argv: list[str], monkeypatch, capsys) -> dict:
    """Run our entry in this process in parse-only mode; returns its JSON (validated DARTS config, upstream args)."""
    from openrlhf_darts.cli import train_ppo_ray

    monkeypatch.setenv(train_ppo_ray.PARSE_ONLY_ENV, "1")
    monkeypatch.setattr(sys, "argv", ["train_ppo_ray"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        train_ppo_ray.main(argv)
    assert done.value.code == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _lookup(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def _flag_values(args: list[str]) -> dict[str, list[str]]:
    """--flag -> the tokens after it up to the next flag (empty for a switch)."""
    flags: dict[str, list[str]] = {}
    current = None
    for token in args:
        if token.startswith("--"):
            current = token
            assert current not in flags, f"{current} given twice"
            flags[current] = []
        else:
            assert current is not None, f"value {token!r} before any flag"
            flags[current].append(token)
    return flags


def _same(parsed, given: list[str]) -> bool:
    if not given:
        return parsed is True
    values = parsed if isinstance(parsed, list) else [parsed]
    if len(values) != len(given):
        return False
    for value, token in zip(values, given):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if float(value) != float(token):
                return False
        elif str(value) != token:
            return False
    return True


# ---- --help ---------------------------------------------------------------------------------------------------------


def test_help_lists_the_darts_group_with_defaults_and_symbols(monkeypatch, capsys):
    import argparse as argparse_module

    from openrlhf.utils import config as upstream_config

    from openrlhf_darts.cli import train_ppo_ray

    original_parse_args = argparse_module.ArgumentParser.parse_args
    original_hierarchize = upstream_config.hierarchize
    monkeypatch.setenv("COLUMNS", "119")
    monkeypatch.setattr(sys, "argv", ["train_ppo_ray"])
    with pytest.raises(SystemExit) as done:
        train_ppo_ray.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    # Upstream's own flags are all there, and the DARTS group comes after them under its own title.
    for upstream_flag in ("--rollout.n_samples_per_prompt", "--train.colocate_all", "--vllm.enable_prefix_caching"):
        assert upstream_flag in text
    group = text[text.index("\nDARTS:\n") :]
    print(group)  # shown with -s; the report quotes it
    flat = re.sub(r"\s+", " ", group)
    for flag, default, symbol, help_text in flag_table():
        assert flag in flat, flag
        shown = {"False": "off"}.get(default, default)
        assert f"(default: {shown})" in flat, (flag, shown)
        if symbol != "-":
            assert f"[{symbol}]" in flat, (flag, symbol)
    # The scoped hooks are gone after the run.
    assert argparse_module.ArgumentParser.parse_args is original_parse_args
    assert upstream_config.hierarchize is original_hierarchize


# ---- the example scripts --------------------------------------------------------------------------------------------


def test_scripts_come_in_baseline_darts_pairs():
    # (a) 7B on one node, (b) several nodes, (c) a one-GPU smoke run; each as a baseline and a DARTS script.
    assert PAIRS == ["train_qwen2.5_32b_multinode", "train_qwen2.5_math_7b_1node", "train_smoke_1gpu"]
    for pair in PAIRS:
        assert {p.name for p in TRAIN_SCRIPTS if p.name.startswith(pair + "_")} == {
            f"{pair}_baseline.sh",
            f"{pair}_darts.sh",
        }


@pytest.mark.parametrize("pair", PAIRS)
def test_darts_script_is_the_baseline_command_plus_darts_lines(pair):
    baseline_module, baseline = _script_command(SCRIPTS / f"{pair}_baseline.sh", run_name="same")
    darts_module, darts = _script_command(SCRIPTS / f"{pair}_darts.sh", run_name="same")
    assert (baseline_module, darts_module) == (UPSTREAM_MODULE, DARTS_MODULE)
    baseline_flags, darts_flags = _flag_values(baseline), _flag_values(darts)
    assert not any(flag.startswith("--darts.") for flag in baseline_flags)
    added = {flag: values for flag, values in darts_flags.items() if flag not in baseline_flags}
    assert added and all(flag.startswith("--darts.") for flag in added), sorted(added)
    assert "--darts.enable" in added
    # Same upstream flags with the same values, in the same order, before the DARTS lines.
    assert darts[: len(baseline)] == baseline


@pytest.mark.parametrize("script", TRAIN_SCRIPTS, ids=lambda p: p.name)
def test_every_script_flag_parses_and_lands_in_the_args(script, monkeypatch, capsys):
    module, args = _script_command(script)
    parsed = _parse(args, monkeypatch, capsys)
    for flag, given in _flag_values(args).items():
        value = _lookup(parsed["args"], flag[2:])
        assert _same(value, given), f"{script.name}: {flag} {given} parsed as {value!r}"
    darts = parsed["darts"]
    assert darts["enable"] == (module == DARTS_MODULE)
    assert darts["n_samples_per_prompt"] == parsed["args"]["rollout"]["n_samples_per_prompt"]
    if darts["enable"]:
        # Paper settings (DARTS_SPEC.md §6): candidates in [n, 2n], L = 1.
        n = darts["n_samples_per_prompt"]
        assert (darts["min_candidates"], darts["max_candidates"], darts["num_long"]) == (n, 2 * n, 1)


# ---- upstream's own recipe ------------------------------------------------------------------------------------------

# The flag set of OpenRLHF's examples/scripts/train_reinforce_baseline_hybrid_engine.sh (git repository only, read at
# commit 3c3be623), as data: hybrid engine (colocate_all + DeepSpeed sleep), a user agent, dynamic filtering, dynamic
# batching (which forces packing), ring attention. Left out: its importance-correction flags
# (--algo.advantage.is_correction_enable / _type icepop), which 0.11.2 renamed (--algo.advantage.is_correction_level
# and friends). Paths are placeholders: parsing never opens them.
HYBRID_ENGINE_RECIPE = [
    "--actor.model_name_or_path", "Qwen/Qwen3-4B-Thinking-2507",
    "--ckpt.load_enable", "--ckpt.output_dir", "/tmp/exp/Qwen3-4B-Thinking",
    "--ckpt.path", "/tmp/exp/Qwen3-4B-Thinking/ckpt", "--ckpt.save_hf", "--ckpt.max_num", "3",
    "--ckpt.save_steps", "10",
    "--train.agent_func_path", "examples/python/agent_func.py",
    "--data.prompt_dataset", "zhuzilin/dapo-math-17k", "--data.input_key", "prompt", "--data.label_key", "label",
    "--data.max_len", "74240", "--rollout.max_new_tokens", "64000", "--data.apply_chat_template",
    "--ds.packing_samples",
    "--rollout.batch_size", "128", "--rollout.n_samples_per_prompt", "8", "--train.batch_size", "1024",
    "--algo.dynamic_filtering_enable", "--algo.dynamic_filtering_range", "0.0", "1.0",
    "--train.dynamic_batch_enable", "--train.max_tokens_per_gpu", "16192", "--rollout.max_tokens_per_gpu", "32768",
    "--train.micro_batch_size", "1", "--rollout.micro_batch_size", "8", "--data.max_samples", "128000",
    "--train.max_epochs", "1", "--train.num_episodes", "1",
    "--ref.num_nodes", "1", "--ref.num_gpus_per_node", "4", "--actor.num_nodes", "1", "--actor.num_gpus_per_node", "4",
    "--vllm.num_engines", "2", "--vllm.tensor_parallel_size", "2", "--vllm.gpu_memory_utilization", "0.7",
    "--train.colocate_all", "--ds.enable_sleep", "--vllm.sync_backend", "nccl", "--vllm.enforce_eager",
    "--ds.zero_stage", "3", "--actor.gradient_checkpointing_enable", "--ds.ring_attn_size", "2",
    "--ds.ring_attn_head_stride", "2", "--ds.param_dtype", "bf16",
    "--algo.advantage.estimator", "reinforce_baseline", "--actor.adam.lr", "5e-7", "--actor.entropy_coef", "0.0",
    "--algo.kl.init_coef", "1e-5", "--algo.kl.use_loss", "--algo.kl.estimator", "k2",
    "--logger.tensorboard_dir", "/tmp/exp/Qwen3-4B-Thinking/runs", "--logger.logging_steps", "1", "--eval.steps", "-1",
]  # fmt: skip


def test_upstreams_hybrid_engine_recipe_parses_with_darts(monkeypatch, capsys):
    parsed = _parse(HYBRID_ENGINE_RECIPE + ["--darts.enable"], monkeypatch, capsys)
    for flag, given in _flag_values(HYBRID_ENGINE_RECIPE).items():
        value = _lookup(parsed["args"], flag[2:])
        assert _same(value, given), f"{flag} {given} parsed as {value!r}"
    # DARTS composes with the hybrid engine, the agent, dynamic filtering and packing: n = 8 gives the paper's plan.
    darts = parsed["darts"]
    assert darts["enable"] and (darts["min_candidates"], darts["max_candidates"], darts["num_long"]) == (8, 16, 1)


def test_upstreams_hybrid_engine_recipe_rejects_streaming(monkeypatch, capsys):
    # colocate_all puts the models on vLLM's GPUs: their forwards cannot overlap generation.
    with pytest.raises(ValueError) as error:
        _parse(HYBRID_ENGINE_RECIPE + ["--darts.enable", "--darts.stream"], monkeypatch, capsys)
    assert str(error.value) == (
        "--darts.stream with --train.colocate_all: colocated models share GPUs with vLLM, so forwards are serialized "
        "with generation and nothing can overlap. Drop --darts.stream or --train.colocate_all"
    )


# ---- bad flags fail before Ray starts -------------------------------------------------------------------------------


def test_bad_darts_value_fails_before_any_ray_actor():
    _, args = _script_command(SCRIPTS / "train_qwen2.5_math_7b_1node_darts.sh")
    env = {**os.environ}
    env.pop("OPENRLHF_DARTS_PARSE_ONLY", None)  # a real run: without validation it would go on to ray.init
    result = subprocess.run(
        [sys.executable, "-m", DARTS_MODULE, *args, "--darts.max_candidates", "6"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode != 0
    # n = 8 in the script, so max_candidates = 6 leaves fewer candidates than samples.
    assert "ValueError: --darts.max_candidates=6 is below n=8" in result.stderr
    assert "set max_candidates >= n" in result.stderr
    # train() would start Ray (and log it) before creating any actor; validation ran before that.
    assert "Started a local Ray instance" not in result.stdout + result.stderr
    assert "ray.init" not in result.stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--train.async_enable"], "--darts.enable with --train.async_enable"),
        (["--train.colocate_all"], "--darts.stream with --train.colocate_all"),
        (["--darts.num_long", "8"], "--darts.num_long=8 must satisfy 0 <= num_long < n=8"),
    ],
)
def test_invalid_combinations_raise_in_on_parsed(extra, message, monkeypatch, capsys):
    _, args = _script_command(SCRIPTS / "train_qwen2.5_math_7b_1node_darts.sh")
    with pytest.raises(ValueError, match=re.escape(message)):
        _parse(args + extra, monkeypatch, capsys)


def test_stream_tokens_installs_the_chunk_forward_model_actors(monkeypatch, capsys):
    from openrlhf.trainer.ray import launcher, ppo_actor, ppo_critic

    from openrlhf_darts.backends import gpu_chunked

    seams = [(launcher, "ReferenceModelActor"), (ppo_actor, "PolicyModelActor"), (ppo_critic, "CriticModelActor")]
    upstream_classes = [getattr(module, name) for module, name in seams]
    for module, name in seams:
        monkeypatch.setattr(module, name, getattr(module, name))  # whatever main rebinds is restored afterwards
    _, args = _script_command(SCRIPTS / "train_qwen2.5_math_7b_1node_darts.sh")
    # The 7B script packs samples, which the per-sample KV cache of the token path cannot score.
    with pytest.raises(ValueError, match=re.escape("--darts.stream_tokens with --ds.packing_samples")):
        _parse(args + ["--darts.stream_tokens"], monkeypatch, capsys)
    unpacked = [a for a in args if a != "--ds.packing_samples"]
    # An abbreviation parses (argparse allows it) but cannot be seen before parsing: rejected with the fix.
    with pytest.raises(ValueError, match="spell out --darts.enable and --darts.stream_tokens in full"):
        _parse(unpacked + ["--darts.stream_tok"], monkeypatch, capsys)
    for (module, name), cls in zip(seams, upstream_classes):
        setattr(module, name, cls)  # start from upstream's classes again
    assert _parse(unpacked + ["--darts.stream_tokens"], monkeypatch, capsys)["darts"]["stream_tokens"] is True
    assert launcher.ReferenceModelActor is gpu_chunked.DartsReferenceModelActor
    assert ppo_actor.PolicyModelActor is gpu_chunked.DartsPolicyModelActor
    assert ppo_critic.CriticModelActor is gpu_chunked.DartsCriticModelActor


def test_unknown_choice_is_an_argparse_error(monkeypatch, capsys):
    from openrlhf_darts.cli import train_ppo_ray

    _, args = _script_command(SCRIPTS / "train_smoke_1gpu_darts.sh")
    monkeypatch.setenv(train_ppo_ray.PARSE_ONLY_ENV, "1")
    monkeypatch.setattr(sys, "argv", ["train_ppo_ray"])
    with pytest.raises(SystemExit) as done:
        train_ppo_ray.main(args + ["--darts.selection", "longest"])
    assert done.value.code == 2  # argparse's usage error, before on_parsed
    assert "argument --darts.selection: invalid choice: 'longest'" in capsys.readouterr().err


@pytest.mark.parametrize("variant", ["baseline", "darts"])
def test_driver_classes_are_rebound_only_with_enable(variant, monkeypatch, capsys):
    from openrlhf.trainer import ppo_trainer
    from openrlhf.trainer.ray import vllm_engine

    from openrlhf_darts.cli import train_ppo_ray

    upstream_classes = (ppo_trainer.PPOTrainer, vllm_engine.RolloutRayActor)
    # Restored after the test whatever _on_parsed does to them.
    monkeypatch.setattr(ppo_trainer, "PPOTrainer", upstream_classes[0])
    monkeypatch.setattr(vllm_engine, "RolloutRayActor", upstream_classes[1])
    _, args = _script_command(SCRIPTS / f"train_smoke_1gpu_{variant}.sh")
    parsed = _parse(args, monkeypatch, capsys)["args"]
    namespace = json.loads(json.dumps(parsed), object_hook=lambda d: argparse.Namespace(**d))
    monkeypatch.delenv(train_ppo_ray.PARSE_ONLY_ENV)
    train_ppo_ray._on_parsed(namespace)  # what upstream's hierarchize hands it, minus the parse-only exit
    rebound = (ppo_trainer.PPOTrainer, vllm_engine.RolloutRayActor)
    if variant == "baseline":
        assert rebound == upstream_classes  # without --darts.enable the run is exactly upstream's
    else:
        from openrlhf_darts.rollout.rollout_actor import DartsRolloutRayActor
        from openrlhf_darts.trainer.ppo_trainer import DartsPPOTrainer

        assert rebound == (DartsPPOTrainer, DartsRolloutRayActor)


# ---- shell hygiene --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", sorted(SCRIPTS.glob("*.sh")), ids=lambda p: p.name)
def test_bash_syntax(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install -y shellcheck)")
    result = subprocess.run(
        ["shellcheck", "-x", *[p.name for p in sorted(SCRIPTS.glob("*.sh"))]],
        cwd=SCRIPTS,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout


# ---- the reward function the scripts load --------------------------------------------------------------------------


def test_math_reward_function():
    spec = importlib.util.spec_from_file_location("reward_math", SCRIPTS / "reward_math.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    prompt = "Solve 1+1. The last line of your response should be of the form Answer: $Answer"

    def score(response: str, label: str) -> float:
        return module.reward_func([prompt + response], [prompt], [label])["rewards"]

    # The prompt's own "Answer: $Answer" is not the response's answer: the prompt is cut off first.
    assert score(" 1+1 is two.\nAnswer: 2", "2") == 1.0
    assert score(" so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}") == 1.0
    assert score(" Answer: 2.0", "2") == 1.0  # numeric equality
    assert score(" Answer: 3", "2") == -1.0
    assert score(" no final answer here", "2") == -1.0
    with pytest.raises(ValueError, match="exactly one per call"):
        module.reward_func(["a", "b"], ["", ""], ["1", "1"])
