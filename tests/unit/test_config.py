"""`DartsConfig`: every rejected value or combination names the flag, the value and the fix; derived defaults.

`openrlhf_darts.config` is standard library only, so these are unit tests: no Ray, no OpenRLHF. The namespace passed to
`from_args` has the shape upstream's `hierarchize` produces (`args.darts`, `args.rollout`, `args.train`, `args.vllm`).
"""

import json
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from openrlhf_darts.config import DartsConfig, add_darts_arguments, flag_table

pytestmark = [pytest.mark.unit]


def _args(n: int = 8, darts: dict | None = None, **train_flags) -> SimpleNamespace:
    train = {
        "async_enable": False,
        "partial_rollout_enable": False,
        "colocate_all": False,
        "dynamic_batch_enable": False,
    }
    vllm = {"enable_sleep": train_flags.pop("enable_sleep", False)}
    ds = {
        "packing_samples": train_flags.pop("packing_samples", False),
        "ring_attn_size": 1,
        "zero_stage": train_flags.pop("zero_stage", 2),
    }
    train.update(train_flags)
    return SimpleNamespace(
        darts=SimpleNamespace(**{"enable": True, **(darts or {})}),
        rollout=SimpleNamespace(n_samples_per_prompt=n),
        train=SimpleNamespace(**train),
        vllm=SimpleNamespace(**vllm),
        ds=SimpleNamespace(**ds),
    )


def _rejects(args: SimpleNamespace, *fragments: str) -> str:
    with pytest.raises(ValueError) as error:
        DartsConfig.from_args(args)
    message = str(error.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from {message!r}"
    return message


# ---- derived defaults -----------------------------------------------------------------------------------------------


def test_defaults_follow_the_paper_for_n_8():
    config = DartsConfig.from_args(_args(n=8))
    # M_low = n = 8, M_up = 2n = 16, average 1.25 * 8 = 10.0, L = 1 (so K = 7: the paper's L:K = 1:7).
    assert (config.min_candidates, config.max_candidates, config.avg_candidates, config.num_long) == (8, 16, 10.0, 1)
    assert config.selection == "dual_end" and config.budget == "fixed" and config.tail_prune == "paper"
    assert config.allocation_active  # 8 < 16
    assert not config.stream and not config.stream_tokens


def test_shortest_selection_defaults_to_no_long_end():
    assert DartsConfig.from_args(_args(n=4, darts={"selection": "shortest"})).num_long == 0


def test_average_is_clipped_into_user_bounds():
    # n = 8: 1.25 * 8 = 10 exceeds max_candidates = 9, so the derived average is clipped to 9.
    assert DartsConfig.from_args(_args(n=8, darts={"max_candidates": 9})).avg_candidates == 9
    # n = 2: 1.25 * 2 = 2.5 lies inside [2, 4] and stays.
    assert DartsConfig.from_args(_args(n=2)).avg_candidates == 2.5


def test_disabled_config_skips_combination_checks():
    # Off means exactly upstream: async training and colocation are fine when DARTS is off.
    config = DartsConfig.from_args(_args(n=1, darts={"enable": False}, async_enable=True, colocate_all=True))
    assert not config.enable and not config.allocation_active


# ---- rejected values: message names the flag=value and says what to do ----------------------------------------------


def test_max_candidates_below_n():
    _rejects(_args(n=8, darts={"max_candidates": 6}), "--darts.max_candidates=6", "n=8", "set max_candidates >= n")


def test_num_long_not_below_n():
    _rejects(_args(n=4, darts={"num_long": 4}), "--darts.num_long=4", "0 <= num_long < n=4", "paper uses L=1")


def test_min_above_max():
    _rejects(
        _args(n=8, darts={"min_candidates": 12, "max_candidates": 10}),
        "--darts.min_candidates=12 exceeds --darts.max_candidates=10",
        "set min_candidates <= max_candidates",
    )


def test_min_below_n():
    _rejects(_args(n=8, darts={"min_candidates": 6}), "--darts.min_candidates=6", "below n=8", "min_candidates = n")


def test_shortest_with_a_long_end():
    _rejects(
        _args(n=8, darts={"selection": "shortest", "num_long": 1}),
        "--darts.num_long=1",
        "--darts.selection shortest",
        "use --darts.selection dual_end",
    )


@pytest.mark.parametrize("average", [7.0, 16.5])
def test_average_outside_bounds(average):
    # n = 8: bounds [8, 16]; 7 is below, 16.5 above.
    _rejects(
        _args(n=8, darts={"avg_candidates": average}),
        f"--darts.avg_candidates={average}",
        "[min_candidates=8, max_candidates=16]",
        "pick an average inside the bounds",
    )


def test_negative_cost_weight():
    _rejects(_args(darts={"cost_weight": -0.5}), "--darts.cost_weight=-0.5", "must be >= 0")


def test_cost_model_without_profile():
    _rejects(_args(darts={"budget": "cost_model"}), "--darts.budget cost_model", "--darts.latency_profile PATH")


def test_missing_latency_profile_file(tmp_path):
    missing = tmp_path / "nope.json"
    _rejects(
        _args(darts={"budget": "cost_model", "latency_profile": str(missing)}),
        f"--darts.latency_profile={str(missing)!r} is not a file",
        "openrlhf_darts.bench.profile_latency",
    )


def test_existing_latency_profile_file_is_accepted(tmp_path):
    # The config only checks that the file exists; the planner parses it.
    profile = tmp_path / "ptl.json"
    profile.write_text("{}")
    config = DartsConfig.from_args(_args(darts={"budget": "cost_model", "latency_profile": str(profile)}))
    assert config.latency_profile == str(profile)


def test_async_training():
    _rejects(_args(async_enable=True), "--darts.enable with --train.async_enable", "Drop --train.async_enable")


def test_partial_rollout():
    _rejects(
        _args(partial_rollout_enable=True),
        "--darts.enable with --train.partial_rollout_enable",
        "Drop --train.partial_rollout_enable",
    )


def test_streaming_with_colocate_all():
    _rejects(
        _args(darts={"stream": True}, colocate_all=True),
        "--darts.stream with --train.colocate_all",
        "Drop --darts.stream or --train.colocate_all",
    )


def test_streaming_with_dynamic_batching():
    _rejects(
        _args(darts={"stream": True}, dynamic_batch_enable=True),
        "--darts.stream with --train.dynamic_batch_enable",
        "Drop one of them",
    )


def test_colocate_all_without_streaming_is_accepted():
    assert DartsConfig.from_args(_args(colocate_all=True, enable_sleep=True)).enable


def test_streaming_with_vllm_sleep():
    _rejects(_args(darts={"stream": True}, enable_sleep=True), "--darts.stream with --vllm.enable_sleep")


def test_stream_tokens_with_packed_samples():
    _rejects(
        _args(darts={"stream": True, "stream_tokens": True}, packing_samples=True),
        "--darts.stream_tokens with --ds.packing_samples",
        "Drop --ds.packing_samples / --ds.ring_attn_size or --darts.stream_tokens",
    )
    assert DartsConfig.from_args(_args(darts={"stream": True, "stream_tokens": True})).stream_tokens


@pytest.mark.parametrize("num_nodes, gpus_per_node", [(1, 1), (2, 8)])
def test_stream_tokens_with_zero3_is_rejected_at_any_rank_count(num_nodes, gpus_per_node):
    # Under ZeRO-3 a chunk forward on one actor gathers parameters with collectives (a hang with > 1 rank); one rank
    # is rejected too (docs/streaming.md, "ZeRO-3"), so the actor's rank count must not change the answer.
    args = _args(darts={"stream": True, "stream_tokens": True}, zero_stage=3)
    args.actor = SimpleNamespace(num_nodes=num_nodes, num_gpus_per_node=gpus_per_node)
    _rejects(
        args,
        "--darts.stream_tokens with --ds.zero_stage 3",
        "Rejected with one rank too",
        "Use --ds.zero_stage 2 (any number of ranks) or drop --darts.stream_tokens",
    )


@pytest.mark.parametrize("zero_stage", [0, 1, 2])
def test_stream_tokens_below_zero3_is_accepted(zero_stage):
    args = _args(darts={"stream": True, "stream_tokens": True}, zero_stage=zero_stage)
    assert DartsConfig.from_args(args).stream_tokens


def test_zero3_without_token_streaming_is_accepted():
    # Sample-level streaming sends every wave to all ranks (one micro-batch per actor), so ZeRO-3 is fine there.
    assert DartsConfig.from_args(_args(darts={"stream": True}, zero_stage=3)).stream
    assert not DartsConfig.from_args(_args(darts={"enable": False, "stream_tokens": True}, zero_stage=3)).enable


def test_stream_tokens_without_stream():
    _rejects(_args(darts={"stream_tokens": True}), "--darts.stream_tokens needs --darts.stream")


@pytest.mark.parametrize(
    "flag, value, choices",
    [
        ("selection", "longest", "dual_end, shortest"),
        ("budget", "utility", "fixed, cost_model"),
        ("tail_prune", "always", "paper, graded, off"),
        ("weight_norm", "softmax", "reference, plain"),
        ("stats_source", "some", "all, kept"),
    ],
)
def test_unknown_enum_value(flag, value, choices):
    # Checked even with DARTS off: a typo must not pass silently into a later run.
    for enable in (True, False):
        _rejects(_args(darts={"enable": enable, flag: value}), f"--darts.{flag}={value!r}", f"is not one of {choices}")


def test_unknown_flag_name():
    with pytest.raises(ValueError, match=r"unknown DARTS flag\(s\) \['max_cands'\]; valid: "):
        DartsConfig.from_flags({"max_cands": 3}, 8)


def test_group_of_one():
    _rejects(_args(n=1), "--rollout.n_samples_per_prompt=1", "at least 2")


@pytest.mark.parametrize(
    "darts, fragment",
    [
        ({"ema_alpha": 0.0}, "--darts.ema_alpha=0.0 must lie in (0, 1]"),
        ({"ema_alpha": 1.5}, "--darts.ema_alpha=1.5 must lie in (0, 1]"),
        ({"stream_chunk_tokens": 0}, "--darts.stream_chunk_tokens=0 must be >= 1"),
        ({"budget_window": 0}, "--darts.budget_window=0 must be >= 1"),
        ({"max_live_caches": 0}, "--darts.max_live_caches=0 must be an integer >= 1"),
        ({"max_live_caches": 0, "enable": False}, "--darts.max_live_caches=0 must be an integer >= 1"),
    ],
)
def test_other_ranges(darts, fragment):
    _rejects(_args(darts=darts), fragment)


def test_max_live_caches_is_a_flag_with_default_64():
    import argparse

    parser = argparse.ArgumentParser()
    add_darts_arguments(parser)
    assert vars(parser.parse_args([]))["darts.max_live_caches"] == 64
    assert vars(parser.parse_args(["--darts.max_live_caches", "3"]))["darts.max_live_caches"] == 3
    assert DartsConfig.from_args(_args(darts={"max_live_caches": 3})).max_live_caches == 3
    assert DartsConfig.from_args(_args()).max_live_caches == 64


def test_config_is_frozen():
    config = DartsConfig.from_args(_args())
    with pytest.raises(AttributeError):
        config.num_long = 2  # type: ignore[misc]


# ---- the flag group -------------------------------------------------------------------------------------------------


def test_flags_parse_into_dotted_dests_and_build_the_same_config():
    import argparse

    parser = argparse.ArgumentParser()
    add_darts_arguments(parser)
    flat = parser.parse_args(["--darts.enable", "--darts.max_candidates", "12", "--darts.selection", "shortest"])
    darts = {key.split(".", 1)[1]: value for key, value in vars(flat).items()}
    # The actions record what the command line gave, by canonical name, in order.
    assert darts.pop("_given") == ("--darts.enable", "--darts.max_candidates", "--darts.selection")
    config = DartsConfig.from_flags(darts, 8)
    # max 12 given; min = n = 8; average 1.25 * 8 = 10 lies in [8, 12]; shortest -> L = 0.
    assert (config.min_candidates, config.max_candidates, config.avg_candidates, config.num_long) == (8, 12, 10.0, 0)
    # Every registered flag is a config field (and vice versa, apart from upstream's n).
    fields = set(config.to_dict()) - {"n_samples_per_prompt"}
    assert set(darts) == fields
    assert {row[0] for row in flag_table()} == {f"--darts.{name}" for name in fields}


def _parsed(argv: list[str], n: int = 8) -> SimpleNamespace:
    """argv through a parser with the DARTS group, hierarchized the way upstream's `hierarchize` does it."""
    import argparse

    parser = argparse.ArgumentParser()
    add_darts_arguments(parser)
    flat = parser.parse_args(argv)
    darts = {key.split(".", 1)[1]: value for key, value in vars(flat).items()}
    args = _args(n)
    args.darts = SimpleNamespace(**darts)
    return args


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--darts.max_candidates", "12"], "--darts.max_candidates"),
        # Spelling out a default, or a derived default's value, is still a flag given without DARTS.
        (["--darts.selection", "dual_end"], "--darts.selection"),
        (["--darts.stream"], "--darts.stream"),
        # An abbreviation is reported by its full name.
        (["--darts.warmup", "3", "--darts.trunc", "long_end"], "--darts.warmup_steps, --darts.truncated"),
    ],
)
def test_a_darts_flag_without_enable_is_an_error_naming_it(argv, named):
    with pytest.raises(ValueError) as error:
        DartsConfig.from_args(_parsed(argv))
    assert str(error.value).startswith(f"{named} given without --darts.enable")
    assert "add --darts.enable or drop them" in str(error.value)


def test_no_darts_flag_and_enable_with_flags_are_accepted():
    assert not DartsConfig.from_args(_parsed([])).enable  # a baseline run: nothing given
    config = DartsConfig.from_args(
        _parsed(["--darts.enable", "--darts.warmup_steps", "10", "--darts.truncated", "long_end"])
    )
    assert (config.enable, config.warmup_steps, config.truncated) == (True, 10, "long_end")


def test_truncated_rule_and_warmup_defaults_and_ranges():
    config = DartsConfig.from_args(_args())
    assert (config.truncated, config.warmup_steps) == ("exclude", 0)
    _rejects(_args(darts={"warmup_steps": -1}), "--darts.warmup_steps=-1 must be an integer >= 0")
    _rejects(_args(darts={"truncated": "keep"}), "--darts.truncated='keep' is not one of exclude, long_end")


def test_argparse_rejects_unknown_choice_with_the_choices():
    import argparse

    parser = argparse.ArgumentParser(exit_on_error=False)
    add_darts_arguments(parser)
    with pytest.raises(argparse.ArgumentError, match=r"invalid choice: 'longest'.*dual_end.*shortest"):
        parser.parse_args(["--darts.selection", "longest"])


def test_help_shows_defaults_and_paper_symbols():
    import argparse

    parser = argparse.ArgumentParser()
    add_darts_arguments(parser)
    text = re.sub(r"\s+", " ", parser.format_help())
    for fragment in [
        "[M_up] most candidates per prompt; default 2n (default: derived)",
        "[lambda] weight of normalized rollout time against effectiveness (cost_model) (default: 1.0)",
        "(default: dual_end)",
        "[PTL(d, r)]",
        "(default: none)",
        "turn DARTS on; off means exactly upstream OpenRLHF (default: off)",
    ]:
        assert fragment in text, fragment


def test_importing_config_loads_no_heavy_package():
    # STYLE.md house rule 2: a worker that needs the config must not pay for torch, Ray, vLLM or OpenRLHF.
    code = (
        "import json, sys; import openrlhf_darts.config; "
        "heavy = ('torch', 'ray', 'vllm', 'openrlhf', 'transformers'); "
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True).stdout)
    assert loaded == []
