"""The training entry point `openrlhf_darts.cli.train_ppo_ray` and the example scripts, on the real upstream parser.

Upstream's `train()` needs CUDA model actors, so these tests stop right after parsing and validation: with
`OPENRLHF_DARTS_PARSE_ONLY=1` the entry prints the validated DARTS config and the parsed upstream args as JSON and
exits 0. Everything up to that point is the real path: upstream's `train_ppo_ray` script run by `runpy`, its own
parser with our group added, upstream's `hierarchize`, `DartsConfig.from_args`.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from openrlhf_darts.config import flag_table
from openrlhf_darts.tail_batching import flag_table as tail_flag_table

pytestmark = [pytest.mark.contract, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "examples" / "scripts"
TRAIN_SCRIPTS = sorted(SCRIPTS.glob("train_*.sh"))
ARMS = ("baseline", "darts", "tail_batching")  # every train script is train_<setting>_<arm>.sh


def _setting(name: str) -> str:
    arm = next(arm for arm in ARMS if name.endswith(f"_{arm}.sh"))
    return name[: -len(f"_{arm}.sh")]


PAIRS = sorted({_setting(p.name) for p in TRAIN_SCRIPTS})
TAIL_PAIRS = [pair for pair in PAIRS if (SCRIPTS / f"{pair}_tail_batching.sh").exists()]
UPSTREAM_MODULE = "openrlhf.cli.train_ppo_ray"
DARTS_MODULE = "openrlhf_darts.cli.train_ppo_ray"
LOCAL_MODULE = "openrlhf_darts.local.train"  # the CPU smoke pair runs local mode for both sides
LOCAL_FLAGS = {
    "--run_dir": 1,
    "--sync_probe": 0,
    "--verbose": 0,
}  # local.train's own flags: how many values each takes


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


def _upstream_args(module: str, args: list[str]) -> list[str]:
    """The arguments upstream's parser sees: a local.train command without local.train's own flags."""
    if module != LOCAL_MODULE:
        return args
    kept, i = [], 0
    while i < len(args):
        if args[i] in LOCAL_FLAGS:
            i += 1 + LOCAL_FLAGS[args[i]]
        else:
            kept.append(args[i])
            i += 1
    return kept


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
    # The tail-batching group follows, with its defaults.
    tail = re.sub(r"\s+", " ", text[text.index("\ntail batching:\n") :])
    for flag, default, _, _ in tail_flag_table():
        shown = {"False": "off"}.get(default, default)
        assert flag in tail and f"(default: {shown})" in tail, (flag, shown)
    # The scoped hooks are gone after the run.
    assert argparse_module.ArgumentParser.parse_args is original_parse_args
    assert upstream_config.hierarchize is original_hierarchize


# ---- the example scripts --------------------------------------------------------------------------------------------


def test_scripts_come_in_baseline_darts_pairs():
    # (a) 7B on one node, (b) several nodes, (c) a one-GPU smoke run, (d) a CPU smoke run in local mode (the Slurm
    # test's job); each as a baseline and a DARTS script, and the 7B and one-GPU smoke settings also with the
    # tail-batching comparison arm.
    assert PAIRS == [
        "train_qwen2.5_32b_multinode",
        "train_qwen2.5_math_7b_1node",
        "train_smoke_1gpu",
        "train_smoke_cpu",
    ]
    assert TAIL_PAIRS == ["train_qwen2.5_math_7b_1node", "train_smoke_1gpu"]
    for pair in PAIRS:
        arms = ("baseline", "darts", "tail_batching") if pair in TAIL_PAIRS else ("baseline", "darts")
        assert {p.name for p in TRAIN_SCRIPTS if _setting(p.name) == pair} == {f"{pair}_{arm}.sh" for arm in arms}


@pytest.mark.parametrize("pair", PAIRS)
def test_darts_script_is_the_baseline_command_plus_darts_lines(pair):
    baseline_module, baseline = _script_command(SCRIPTS / f"{pair}_baseline.sh", run_name="same")
    darts_module, darts = _script_command(SCRIPTS / f"{pair}_darts.sh", run_name="same")
    if pair == "train_smoke_cpu":
        assert (baseline_module, darts_module) == (LOCAL_MODULE, LOCAL_MODULE)
    else:
        assert (baseline_module, darts_module) == (UPSTREAM_MODULE, DARTS_MODULE)
    baseline_flags, darts_flags = _flag_values(baseline), _flag_values(darts)
    assert not any(flag.startswith("--darts.") for flag in baseline_flags)
    added = {flag: values for flag, values in darts_flags.items() if flag not in baseline_flags}
    assert added and all(flag.startswith("--darts.") for flag in added), sorted(added)
    assert "--darts.enable" in added
    # Same upstream flags with the same values, in the same order, before the DARTS lines.
    assert darts[: len(baseline)] == baseline


def test_cpu_smoke_pair_runs_the_local_modes_settings():
    """train_smoke_cpu_*.sh run `local.compare`'s upstream flags (its defaults, 2 steps) on the tiny model, through
    local.train with the weight-sync probe, as compare's runs do."""
    from openrlhf_darts.local import compare

    module, args = _script_command(SCRIPTS / "train_smoke_cpu_baseline.sh", run_name="smoke")
    assert module == LOCAL_MODULE
    assert args[0] == "--run_dir" and args[1].endswith("/smoke") and args[2] == "--sync_probe"
    run_dir = Path(args[1])
    expected = compare.build_argv(
        compare.build_parser().parse_args(["--steps", "2"]), "tiny", run_dir / "problems.jsonl"
    )

    def normalized(tokens: list[str]) -> dict[str, list]:  # "1e-4" and "0.0001" are the same value
        def value(token: str):
            try:
                return float(token)
            except ValueError:
                return token

        return {flag: [value(t) for t in given] for flag, given in _flag_values(tokens).items()}

    assert normalized(args[3:]) == normalized(expected)


@pytest.mark.parametrize("pair", TAIL_PAIRS)
def test_tail_batching_script_is_the_baseline_command_plus_tail_batching_lines(pair):
    baseline_module, baseline = _script_command(SCRIPTS / f"{pair}_baseline.sh", run_name="same")
    tail_module, tail = _script_command(SCRIPTS / f"{pair}_tail_batching.sh", run_name="same")
    assert (baseline_module, tail_module) == (UPSTREAM_MODULE, DARTS_MODULE)
    baseline_flags, tail_flags = _flag_values(baseline), _flag_values(tail)
    assert not any(flag.startswith("--tail_batching.") for flag in baseline_flags)
    added = {flag: values for flag, values in tail_flags.items() if flag not in baseline_flags}
    assert added and all(flag.startswith("--tail_batching.") for flag in added), sorted(added)
    assert "--tail_batching.enable" in added and not any(flag.startswith("--darts.") for flag in tail_flags)
    assert tail[: len(baseline)] == baseline


@pytest.mark.parametrize("script", TRAIN_SCRIPTS, ids=lambda p: p.name)
def test_every_script_flag_parses_and_lands_in_the_args(script, monkeypatch, capsys):
    module, args = _script_command(script)
    args = _upstream_args(module, args)
    parsed = _parse(args, monkeypatch, capsys)
    for flag, given in _flag_values(args).items():
        value = _lookup(parsed["args"], flag[2:])
        assert _same(value, given), f"{script.name}: {flag} {given} parsed as {value!r}"
    darts = parsed["darts"]
    assert darts["enable"] == script.name.endswith("_darts.sh")
    assert parsed["tail_batching"]["enable"] == script.name.endswith("_tail_batching.sh")
    if module != LOCAL_MODULE:
        assert module == (UPSTREAM_MODULE if script.name.endswith("_baseline.sh") else DARTS_MODULE)
    assert darts["n_samples_per_prompt"] == parsed["args"]["rollout"]["n_samples_per_prompt"]
    if darts["enable"]:
        # Paper settings (DARTS_SPEC.md §6): candidates in [n, 2n], L = 1.
        n = darts["n_samples_per_prompt"]
        assert (darts["min_candidates"], darts["max_candidates"], darts["num_long"]) == (n, 2 * n, 1)
    if parsed["tail_batching"]["enable"]:
        # 1.25 x the batch launched (320 for 256, 20 for 16), aborted prompts deferred without a cap.
        assert parsed["tail_batching"] == {
            "enable": True, "launch_ratio": 1.25, "aborted_prompts": "defer", "max_deferrals": None,
        }  # fmt: skip


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


def test_a_darts_flag_without_enable_fails_naming_it(monkeypatch, capsys):
    # The baseline script plus a DARTS flag: it would be silently ignored, so it is an error (before Ray) that names it,
    # also when the value given is the default (derived defaults are None, so only "was it given" can tell).
    _, args = _script_command(SCRIPTS / "train_smoke_1gpu_baseline.sh")
    with pytest.raises(
        ValueError, match=re.escape("--darts.max_candidates, --darts.truncated given without --darts.enable")
    ):
        _parse(args + ["--darts.max_candidates", "8", "--darts.truncated", "exclude"], monkeypatch, capsys)
    assert _parse(args, monkeypatch, capsys)["darts"]["enable"] is False  # the baseline itself parses


@pytest.mark.parametrize(
    "script, extra, message",
    [
        (
            "train_smoke_1gpu_tail_batching.sh",
            ["--darts.enable"],
            "--tail_batching.enable with --darts.enable is not supported",
        ),
        (
            "train_smoke_1gpu_tail_batching.sh",
            ["--tail_batching.launch_ratio", "0.8"],
            "--tail_batching.launch_ratio=0.8 must be a finite number >= 1",
        ),
        (
            "train_smoke_1gpu_baseline.sh",
            ["--tail_batching.launch_ratio", "1.5"],
            "--tail_batching.launch_ratio=1.5 has no effect without --tail_batching.enable",
        ),
        (
            "train_smoke_1gpu_tail_batching.sh",
            ["--rollout.vllm_generate_batch_size", "32"],
            "--rollout.vllm_generate_batch_size=32 with --tail_batching.enable",
        ),
    ],
)
def test_invalid_tail_batching_flags_raise_in_on_parsed(script, extra, message, monkeypatch, capsys):
    _, args = _script_command(SCRIPTS / script)
    with pytest.raises(ValueError, match=re.escape(message)):
        _parse(args + extra, monkeypatch, capsys)


def test_stream_tokens_installs_the_chunk_forward_model_actors(monkeypatch, capsys):
    from openrlhf_darts import compat

    compat.install()  # OpenRLHF's models import flash-attn: the CPU fallback must be on the path first
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
    # Unpacked, it still runs ZeRO-3, where a chunk forward on one rank would gather parameters alone (a hang).
    with pytest.raises(ValueError, match=re.escape("--darts.stream_tokens with --ds.zero_stage 3")):
        _parse(unpacked + ["--darts.stream_tokens"], monkeypatch, capsys)
    stage = unpacked.index("--ds.zero_stage")
    assert unpacked[stage + 1] == "3"  # precondition of the ZeRO-3 case above
    zero2 = unpacked[: stage + 1] + ["2"] + unpacked[stage + 2 :]
    # An abbreviation parses (argparse allows it) but cannot be seen before parsing: rejected with the fix.
    with pytest.raises(ValueError, match="spell out --darts.enable and --darts.stream_tokens in full"):
        _parse(zero2 + ["--darts.stream_tok"], monkeypatch, capsys)
    for (module, name), cls in zip(seams, upstream_classes):
        setattr(module, name, cls)  # start from upstream's classes again
    assert _parse(zero2 + ["--darts.stream_tokens"], monkeypatch, capsys)["darts"]["stream_tokens"] is True
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


@pytest.mark.parametrize("variant", ["baseline", "darts", "tail_batching"])
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
    else:  # tail batching runs on the DARTS trainer (its generator) and engine actor (its group abort)
        from openrlhf_darts.rollout.rollout_actor import DartsRolloutRayActor
        from openrlhf_darts.trainer.ppo_trainer import DartsPPOTrainer

        assert rebound == (DartsPPOTrainer, DartsRolloutRayActor)


# ---- the paper's ablation (DARTS_SPEC.md §5), runnable with token streaming ----------------------------------------

ABLATION_ARMS = ["0_baseline", "1_stream_tokens", "2_dual_end_uniform", "3_adaptive"]


def _arm(arm: str) -> Path:
    return SCRIPTS / f"ablation_qwen2.5_14b_{arm}.sh"


# The --darts.* flags each arm changes against the previous one (arm 1: all of its lines, against a baseline without).
ABLATION_CHANGES = {
    "1_stream_tokens": {
        "--darts.enable",
        "--darts.selection",
        "--darts.num_long",
        "--darts.min_candidates",
        "--darts.max_candidates",
        "--darts.budget",
        "--darts.avg_candidates",
        "--darts.tail_prune",
        "--darts.stream",
        "--darts.stream_tokens",
    },
    "2_dual_end_uniform": {"--darts.min_candidates", "--darts.max_candidates", "--darts.avg_candidates"},
    "3_adaptive": {"--darts.min_candidates", "--darts.max_candidates", "--darts.tail_prune"},
}
# (M_low, M_up, average, L, tail_prune) per DARTS arm, by hand from the arm's description (n = 8).
ABLATION_PLANS = {
    "1_stream_tokens": (8, 8, 8.0, 1, "off"),  # M'_i = n: nothing selected
    "2_dual_end_uniform": (10, 10, 10.0, 1, "off"),  # 10 for every prompt, keep 7 shortest + the longest
    "3_adaptive": (8, 16, 10.0, 1, "paper"),  # the same average of 10, allocated in [n, 2n]
}


@pytest.fixture
def restore_model_actor_classes(monkeypatch):
    """Parsing with --darts.enable --darts.stream_tokens rebinds upstream's model actor classes; undo it afterwards."""
    from openrlhf_darts import compat

    compat.install()  # OpenRLHF's models import flash-attn: the CPU fallback must be on the path first
    from openrlhf.trainer.ray import launcher, ppo_actor, ppo_critic

    seams = [(launcher, "ReferenceModelActor"), (ppo_actor, "PolicyModelActor"), (ppo_critic, "CriticModelActor")]
    for module, name in seams:
        monkeypatch.setattr(module, name, getattr(module, name))


def test_ablation_scripts_are_the_four_arms():
    assert sorted(SCRIPTS.glob("ablation_*.sh")) == [_arm(arm) for arm in ABLATION_ARMS]


def test_each_ablation_arm_differs_from_the_previous_only_in_darts_lines():
    commands = [_script_command(_arm(arm), run_name="same") for arm in ABLATION_ARMS]
    assert [module for module, _ in commands] == [UPSTREAM_MODULE] + [DARTS_MODULE] * 3
    baseline = commands[0][1]
    assert not any(token.startswith("--darts.") for token in baseline)
    darts_lines = [{}]
    for arm, (_, args) in zip(ABLATION_ARMS[1:], commands[1:]):
        # The baseline command unchanged, in the same order, then only --darts.* lines.
        assert args[: len(baseline)] == baseline, arm
        added = _flag_values(args[len(baseline) :])
        assert added and all(flag.startswith("--darts.") for flag in added), (arm, sorted(added))
        darts_lines.append(added)
    for arm, previous, current in zip(ABLATION_ARMS[1:], darts_lines, darts_lines[1:]):
        changed = {flag for flag in previous.keys() | current.keys() if previous.get(flag) != current.get(flag)}
        assert changed == ABLATION_CHANGES[arm], arm
    # The last arm is the paper's DARTS command (PAPER_DARTS_ARGS, as in the 32B script) plus token streaming.
    _, paper = _script_command(SCRIPTS / "train_qwen2.5_32b_multinode_darts.sh")
    paper_darts = {flag: values for flag, values in _flag_values(paper).items() if flag.startswith("--darts.")}
    assert darts_lines[-1] == {**paper_darts, "--darts.stream_tokens": []}


@pytest.mark.parametrize("arm", ABLATION_ARMS)
def test_ablation_script_flags_parse_on_the_shared_zero2_unpacked_recipe(
    arm, monkeypatch, capsys, restore_model_actor_classes
):
    script = _arm(arm)
    module, args = _script_command(script)
    parsed = _parse(args, monkeypatch, capsys)
    for flag, given in _flag_values(args).items():
        value = _lookup(parsed["args"], flag[2:])
        assert _same(value, given), f"{script.name}: {flag} {given} parsed as {value!r}"
    # Every arm, the baseline included, runs the token-streaming variant of the recipe: ZeRO-2, no packing.
    ds = parsed["args"]["ds"]
    assert (ds["zero_stage"], ds["packing_samples"]) == (2, False)
    _, reference = _script_command(SCRIPTS / "train_qwen2.5_32b_multinode_baseline.sh")
    assert {"--ds.zero_stage": ["3"], "--ds.packing_samples": []}.items() <= _flag_values(reference).items()
    darts = parsed["darts"]
    assert darts["enable"] == (module == DARTS_MODULE) == (arm != "0_baseline")
    if darts["enable"]:
        plan = (darts["min_candidates"], darts["max_candidates"], darts["avg_candidates"], darts["num_long"])
        assert (*plan, darts["tail_prune"]) == ABLATION_PLANS[arm]
        assert darts["n_samples_per_prompt"] == 8 and darts["selection"] == "dual_end"
        assert darts["stream"] and darts["stream_tokens"]


def test_token_streaming_arm_on_zero3_fails_before_any_ray_actor(restore_model_actor_classes):
    _, args = _script_command(_arm("1_stream_tokens"))
    env = {**os.environ}
    env.pop("OPENRLHF_DARTS_PARSE_ONLY", None)  # a real run: without validation it would go on to ray.init
    result = subprocess.run(
        [sys.executable, "-m", DARTS_MODULE, *args, "--ds.zero_stage", "3"],  # the later value wins in argparse
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode != 0
    assert "ValueError: --darts.stream_tokens with --ds.zero_stage 3" in result.stderr
    assert "Use --ds.zero_stage 2 (any number of ranks) or drop --darts.stream_tokens" in result.stderr
    assert "Started a local Ray instance" not in result.stdout + result.stderr
    assert "ray.init" not in result.stderr


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
