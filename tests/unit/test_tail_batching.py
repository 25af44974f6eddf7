"""Tail batching's pure part (core/tail_batching.py) and its config (openrlhf_darts/tail_batching.py).

The race is checked against a brute force that replays the same completions with a different formulation: a group is
trained iff, at the moment it completes, the groups already trained plus the pinned groups still running leave a slot;
an unpinned group is aborted at the first moment they leave none. Docs are checked like docs/flags.md and
docs/metrics.md for DARTS (tests/unit/test_docs.py).
"""

import math
import re
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openrlhf_darts.core.tail_batching import (
    DeferredPrompt,
    DeferredQueue,
    GroupState,
    TailRace,
    launch_count,
    pinned_flags,
)
from openrlhf_darts.tail_batching import TailBatchingConfig, add_tail_batching_arguments, flag_table

pytestmark = [pytest.mark.unit]

REPO = Path(__file__).resolve().parents[2]


# ---- launch count -----------------------------------------------------------------------------------------------


def test_launch_count_hand_cases():
    assert launch_count(1.0, 256) == 256  # r = 1: exactly the batch
    assert launch_count(1.25, 256) == 320  # 1.25 * 256 = 320 exactly
    assert launch_count(1.25, 4) == 5
    assert launch_count(1.1, 10) == 11  # 1.1 * 10 is 11.000000000000002 in floating point: still 11
    assert launch_count(1.3, 7) == 10  # 9.1 -> 10


@given(st.integers(100, 400), st.integers(1, 2048))
def test_launch_count_is_the_exact_ceiling_for_two_decimal_ratios(hundredths, batch):
    ratio = hundredths / 100
    assert launch_count(ratio, batch) == math.ceil(Fraction(hundredths, 100) * batch) >= batch


def test_launch_count_rejects_ratios_below_one():
    with pytest.raises(ValueError, match=r"launch_ratio=0.5 is below 1.0"):
        launch_count(0.5, 8)


# ---- pinning ----------------------------------------------------------------------------------------------------


def test_pinned_flags_hand_case():
    # Deferred 0, 2, 1, 3, 2 times; max_deferrals 2 makes items 1, 3, 4 eligible; target 2 pins the first two.
    assert pinned_flags([0, 2, 1, 3, 2], target=2, max_deferrals=2) == [False, True, False, True, False]
    assert pinned_flags([0, 2, 1, 3, 2], target=4, max_deferrals=None) == [False] * 5  # drop mode pins nothing


@given(st.lists(st.integers(0, 4), max_size=30), st.integers(0, 30), st.integers(1, 4))
def test_pinned_are_the_first_eligible_up_to_target(deferrals, target, max_deferrals):
    flags = pinned_flags(deferrals, target, max_deferrals)
    eligible = [i for i, d in enumerate(deferrals) if d >= max_deferrals]
    assert [i for i, f in enumerate(flags) if f] == eligible[:target]


# ---- the race ---------------------------------------------------------------------------------------------------


def run_race(target, pinned, order, passed):
    """Drive TailRace as the generator does: abort_now after launch and after every completion. Aborted groups'
    completions are never reported (the engine aborted them). Returns the final states."""
    race = TailRace(target, pinned)
    race.abort_now()
    for index in order:
        if race.states[index] is GroupState.RUNNING:
            race.complete(index, passed[index])
            race.abort_now()
    assert race.done
    return race.states


def brute_force(target, pinned, order, passed):
    """The race restated over time: at each completion, count what is trained and what pinned groups still run."""
    trained, filtered, aborted = set(), set(), set()
    if sum(pinned) >= target:  # pinned groups hold every slot from the start
        aborted = {j for j in order if not pinned[j]}
    for step, index in enumerate(order):
        if index in aborted:
            continue
        still_pinned = {j for j in order[step:] if pinned[j]} - {index}
        if not passed[index]:
            filtered.add(index)
        elif pinned[index] or len(trained) + len(still_pinned) < target:
            trained.add(index)
        # The slots are full now: every unpinned group that has not completed can no longer be trained.
        still_pinned = {j for j in order[step + 1 :] if pinned[j]}
        if len(trained) + len(still_pinned) >= target:
            aborted |= {j for j in order[step + 1 :] if not pinned[j]} - trained - filtered
    return trained, filtered, aborted


@st.composite
def races(draw):
    size = draw(st.integers(1, 12))
    target = draw(st.integers(1, size))
    pinned_count = draw(st.integers(0, target))
    pinned = [True] * pinned_count + [False] * (size - pinned_count)
    pinned = draw(st.permutations(pinned))
    order = draw(st.permutations(range(size)))
    passed = draw(st.lists(st.booleans(), min_size=size, max_size=size))
    return target, list(pinned), list(order), passed


@given(races())
def test_race_matches_brute_force(case):
    target, pinned, order, passed = case
    states = run_race(target, pinned, order, passed)
    trained, filtered, aborted = brute_force(target, pinned, order, passed)
    assert {i for i, s in enumerate(states) if s is GroupState.ACCEPTED} == trained
    assert {i for i, s in enumerate(states) if s is GroupState.FILTERED} == filtered
    assert {i for i, s in enumerate(states) if s is GroupState.ABORTED} == aborted
    assert len(trained) + len(filtered) + len(aborted) == len(order)


@given(races())
def test_without_filtering_exactly_target_groups_train(case):
    target, pinned, order, _ = case
    states = run_race(target, pinned, order, [True] * len(order))
    trained = [i for i, s in enumerate(states) if s is GroupState.ACCEPTED]
    assert len(trained) == target
    assert all(states[i] is GroupState.ACCEPTED for i, p in enumerate(pinned) if p)  # pinned always train
    # The unpinned that train are the first ones to complete, in completion order.
    unpinned = [i for i in order if not pinned[i]]
    assert sorted(i for i in trained if not pinned[i]) == sorted(unpinned[: target - sum(pinned)])


def test_race_hand_case_with_a_pinned_group_and_a_filtered_one():
    # target 2; group 0 pinned; groups 1-3 unpinned. Group 2 completes first but is filtered (slot stays free),
    # group 3 completes and is trained: trained 3 + pinned 0 still running = 2 slots, so group 1 is aborted at once.
    race = TailRace(2, [True, False, False, False])
    assert race.abort_now() == []
    assert race.complete(2, passed=False) is GroupState.FILTERED
    assert race.abort_now() == []
    assert race.complete(3, passed=True) is GroupState.ACCEPTED
    assert race.abort_now() == [1]
    assert not race.done  # the pinned group still runs
    assert race.complete(0, passed=True) is GroupState.ACCEPTED
    assert race.done and race.count(GroupState.ACCEPTED) == 2


def test_replacements_join_the_race_unpinned():
    race = TailRace(1, [False, False])
    race.complete(0, passed=False)
    index = race.launch()
    assert index == 2 and race.pinned == [False, False, False] and race.running == [1, 2]


def test_race_rejects_bad_input():
    with pytest.raises(ValueError, match="3 pinned groups exceed target=2"):
        TailRace(2, [True, True, True])
    with pytest.raises(ValueError, match="1 groups launched for target=2"):
        TailRace(2, [False])
    race = TailRace(1, [False, False])
    race.complete(0, passed=True)
    race.abort_now()
    with pytest.raises(ValueError, match="group 1 completed but is aborted"):
        race.complete(1, passed=True)


# ---- the queue --------------------------------------------------------------------------------------------------

prompts = st.builds(
    DeferredPrompt,
    prompt=st.text(max_size=8),
    label=st.one_of(st.none(), st.text(max_size=4)),
    image=st.none(),
    deferrals=st.integers(0, 5),
)


@given(st.lists(prompts, max_size=20), st.lists(prompts, max_size=20), st.integers(0, 25))
def test_queue_is_fifo_and_its_state_round_trips(first, second, limit):
    queue = DeferredQueue()
    queue.extend(first)
    queue.extend(second)
    restored = DeferredQueue()
    restored.load_state_dict(queue.state_dict())
    assert restored.items() == queue.items() == first + second
    assert restored.take(limit) == (first + second)[:limit]
    assert restored.items() == (first + second)[limit:]


def test_queue_refuses_foreign_states():
    queue = DeferredQueue()
    with pytest.raises(ValueError, match="is not a version-1 state"):
        queue.load_state_dict({"items": []})
    with pytest.raises(ValueError, match=r"items\[0\]=.* needs exactly the keys prompt, label, image, deferrals"):
        queue.load_state_dict({"version": 1, "items": [{"prompt": "p"}]})
    assert len(queue) == 0


# ---- config -----------------------------------------------------------------------------------------------------


def _args(tail=None, darts=False, **overrides) -> SimpleNamespace:
    train = {"async_enable": False, "partial_rollout_enable": False}
    rollout = {"batch_size": 256, "vllm_generate_batch_size": None}
    for key, value in overrides.items():
        (train if key in train else rollout)[key] = value
    return SimpleNamespace(
        tail_batching=SimpleNamespace(**{"enable": True, **(tail or {})}),
        darts=SimpleNamespace(enable=darts),
        train=SimpleNamespace(**train),
        rollout=SimpleNamespace(**rollout),
    )


def _rejects(args, *fragments):
    with pytest.raises(ValueError) as error:
        TailBatchingConfig.from_args(args)
    for fragment in fragments:
        assert fragment in str(error.value), (fragment, str(error.value))


def test_config_defaults():
    config = TailBatchingConfig.from_args(_args())
    assert config.to_dict() == {
        "enable": True, "launch_ratio": 1.25, "aborted_prompts": "defer", "max_deferrals": None,
    }  # fmt: skip
    off = TailBatchingConfig.from_args(_args({"enable": False}))
    assert not off.enable


@pytest.mark.parametrize(
    "tail, fragments",
    [
        ({"launch_ratio": 0.9}, ["--tail_batching.launch_ratio=0.9 must be a finite number >= 1"]),
        ({"launch_ratio": float("inf")}, ["--tail_batching.launch_ratio=inf"]),
        ({"max_deferrals": 0}, ["--tail_batching.max_deferrals=0 must be an integer >= 1"]),
        ({"aborted_prompts": "keep"}, ["--tail_batching.aborted_prompts='keep' is not one of defer, drop"]),
        (
            {"aborted_prompts": "drop", "max_deferrals": 3},
            ["--tail_batching.max_deferrals=3 has no effect with --tail_batching.aborted_prompts drop"],
        ),
        (
            {"enable": False, "launch_ratio": 1.5},
            ["--tail_batching.launch_ratio=1.5 has no effect without --tail_batching.enable"],
        ),
        ({"mystery": 1}, ["unknown tail-batching flag(s) ['mystery']"]),
    ],
)
def test_bad_values_are_rejected_with_the_flag_and_the_fix(tail, fragments):
    _rejects(_args(tail), *fragments)


def test_combinations_that_cannot_work_are_rejected():
    _rejects(_args(darts=True), "--tail_batching.enable with --darts.enable is not supported", "separate arms")
    _rejects(_args(async_enable=True), "--tail_batching.enable with --train.async_enable")
    _rejects(_args(partial_rollout_enable=True), "--tail_batching.enable with --train.partial_rollout_enable")
    _rejects(_args(vllm_generate_batch_size=512), "--rollout.vllm_generate_batch_size=512 with --tail_batching.enable")
    # Equal to the batch size is what upstream does anyway: accepted.
    assert TailBatchingConfig.from_args(_args(vllm_generate_batch_size=256)).enable
    # Off: DARTS may run, nothing is checked against it.
    assert not TailBatchingConfig.from_args(_args({"enable": False}, darts=True)).enable


def test_flags_register_on_a_parser_and_hierarchize_like_upstreams():
    import argparse

    parser = argparse.ArgumentParser()
    add_tail_batching_arguments(parser)
    parsed = vars(parser.parse_args(["--tail_batching.enable", "--tail_batching.launch_ratio", "1.5"]))
    assert parsed == {
        "tail_batching.enable": True,
        "tail_batching.launch_ratio": 1.5,
        "tail_batching.aborted_prompts": "defer",
        "tail_batching.max_deferrals": None,
    }


# ---- docs -------------------------------------------------------------------------------------------------------


def test_flags_doc_lists_every_tail_batching_flag():
    rows = {}
    for line in (REPO / "docs" / "flags.md").read_text().splitlines():
        match = re.match(r"\| `(--tail_batching\.[a-z_]+)` \|", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in line.strip().strip("|").split("|")]
    assert sorted(rows) == sorted(flag for flag, *_ in flag_table())
    for flag, default, symbol, _ in flag_table():
        shown = {"False": "off"}.get(default, default)
        assert rows[flag][1] == f"`{shown}`", (flag, rows[flag][1])
        assert rows[flag][2] == symbol and len(rows[flag][3]) > 40, flag


def test_metrics_doc_documents_every_tail_batching_key():
    literal = re.compile(r"""["']((?:tail_batching/|timing/tail_batching_)[a-z0-9_]+)["']""")
    emitted = set()
    for path in (REPO / "openrlhf_darts").rglob("*.py"):
        emitted |= set(literal.findall(path.read_text()))
    documented = set(
        re.findall(
            r"`((?:tail_batching/|timing/tail_batching_)[a-z0-9_]+)`", (REPO / "docs" / "metrics.md").read_text()
        )
    )
    assert {
        "tail_batching/prompts_aborted",
        "tail_batching/prompts_deferred",
        "tail_batching/wasted_tokens",
    } <= emitted
    assert emitted == documented, (sorted(emitted - documented), sorted(documented - emitted))
