"""Per-prompt EMA of length spread (§3(d) 1-2), censoring rule, and the checkpoint round trip."""

import json
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openrlhf_darts.core.length_stats import LengthStats

pytestmark = pytest.mark.unit


def decode_updates(raw: bytes):
    """A stream of (key, lengths, censored) updates from bytes: 3 prompt keys, groups of 0-8 lengths in [0, 255].

    Bytes rather than nested lists: hypothesis draws them several times faster (see test_selection).
    """
    updates, pos = [], 0
    while pos + 2 <= len(raw):
        key, size = f"prompt-{raw[pos] % 3}", raw[pos + 1] % 9
        body = raw[pos + 2 : pos + 2 + size]
        flags = raw[pos + 2 + size : pos + 2 + 2 * size]
        pos += 2 + 2 * size
        if len(flags) < len(body):
            break
        updates.append((key, list(body), [b >= 192 for b in flags]))
    return updates


update_streams = st.binary(max_size=120).map(decode_updates)
alphas = st.sampled_from([0.3, 1.0, 0.5, 0.05, 0.999])


def test_hand_example_ema():
    stats = LengthStats(alpha=0.5)
    # [2, 4, 6]: mean 4, squared deviations 4 + 0 + 4 = 8, sample variance 8 / (3 - 1) = 4, std 2.0. First sets v.
    assert stats.update("q", [2, 4, 6]) is True and stats.std("q") == 2.0
    # [0, 6, 12]: std 6.0 (deviations 36 + 0 + 36 = 72, / 2 = 36). v = 0.5 * 6 + 0.5 * 2 = 4.0.
    assert stats.update("q", [0, 6, 12]) is True and stats.std("q") == 4.0
    assert stats.update("q", [7]) is False and stats.std("q") == 4.0  # one length has no sample std
    assert stats.update("q", [4, 4]) is True and stats.std("q") == 2.0  # std 0 -> 0.5 * 0 + 0.5 * 4
    assert len(stats) == 1 and "q" in stats and "r" not in stats


def test_hand_example_censoring():
    stats = LengthStats(alpha=0.3)
    stats.update("q", [0, 6, 12])  # v = 6.0
    # A censored group with std 2.0 < 6.0 is only a lower bound: skipped, v stays 6.0.
    assert stats.update("q", [2, 4, 6], censored=[False, False, True]) is False and stats.std("q") == 6.0
    # The same group uncensored lowers v: 0.3 * 2 + 0.7 * 6 = 0.6 + 4.2 = 4.8.
    assert stats.update("q", [2, 4, 6]) is True and stats.std("q") == pytest.approx(4.8, abs=1e-12)
    # A censored group with std 12.0 > 4.8 may raise v: 0.3 * 12 + 0.7 * 4.8 = 3.6 + 3.36 = 6.96.
    assert stats.update("q", [0, 12, 24], censored=[False, True, True]) is True
    assert stats.std("q") == pytest.approx(6.96, abs=1e-12)
    # The first observation of a prompt counts even when censored: there is nothing to lower.
    assert stats.update("r", [1, 3], censored=[True, True]) is True and stats.std("r") == statistics.stdev([1, 3])


def test_weights_for_unseen_prompts_use_the_mean():
    stats = LengthStats()
    assert stats.weights(["a", "b"]) == [0.0, 0.0] and stats.mean_std() == 0.0  # nothing known -> uniform zeros
    stats.update("a", [2, 4, 6])  # v_a = 2.0
    stats.update("b", [0, 6, 12])  # v_b = 6.0
    # Unseen "c" gets the mean of the known v's, (2 + 6) / 2 = 4.
    assert stats.weights(["b", "c", "a"]) == [6.0, 4.0, 2.0] and stats.mean_std() == 4.0
    assert stats.std("c") is None


@given(update_streams, alphas)
def test_ema_follows_the_rule_and_censoring_never_lowers(updates, alpha):
    stats = LengthStats(alpha)
    for key, lengths, censored in updates:
        before = stats.std(key)
        changed = stats.update(key, lengths, censored)
        after = stats.std(key)
        if len(lengths) < 2:
            assert (changed, after) == (False, before)
            continue
        s = statistics.stdev(lengths)
        if before is None:
            assert (changed, after) == (True, s)
        elif any(censored) and s < before:
            assert (changed, after) == (False, before)
        else:
            assert after == alpha * s + (1 - alpha) * before and changed == (after != before)
        if any(censored) and before is not None:
            assert after >= before  # censored lengths may raise v, never lower it


@given(update_streams, alphas)
def test_state_round_trip_is_exact_including_json(updates, alpha):
    stats = LengthStats(alpha)
    for key, lengths, censored in updates:
        stats.update(key, lengths, censored)
    state = stats.state_dict()
    via_json = json.loads(json.dumps(state))
    assert via_json == state  # JSON keeps Python floats exactly
    restored = LengthStats(alpha)
    restored.load_state_dict(via_json)
    assert restored.state_dict() == state
    assert LengthStats.from_state_dict(via_json).state_dict() == state
    # The restored table behaves identically afterwards.
    for key, lengths, censored in updates:
        assert restored.update(key, lengths, censored) == stats.update(key, lengths, censored)
    assert restored.state_dict() == stats.state_dict()


def test_counts_track_applied_updates():
    stats = LengthStats()
    stats.update("q", [0, 6, 12])
    stats.update("q", [1, 1], censored=[True, False])  # skipped: censored and std 0 < 6
    stats.update("q", [1, 2])
    assert stats.state_dict()["counts"] == {"q": 2}


@pytest.mark.parametrize(
    "alpha, error, message",
    [
        (0.0, ValueError, "alpha=0.0 is outside (0, 1]"),
        (1.5, ValueError, "alpha=1.5 is outside (0, 1]"),
        (float("nan"), ValueError, "alpha=nan is not finite"),
        (True, TypeError, "alpha=True"),
    ],
)
def test_alpha_is_validated(alpha, error, message):
    with pytest.raises(error) as info:
        LengthStats(alpha)
    assert message in str(info.value)


def test_update_rejects_bad_input():
    stats = LengthStats()
    with pytest.raises(TypeError, match="key=3"):
        stats.update(3, [1, 2])
    with pytest.raises(ValueError, match=r"lengths\[1\]=-2"):
        stats.update("q", [1, -2])
    with pytest.raises(ValueError, match="censored has 1 entries but lengths has 2"):
        stats.update("q", [1, 2], censored=[True])
    with pytest.raises(TypeError, match=r"censored\[0\]=1"):
        stats.update("q", [1, 2], censored=[1, 0])


def test_load_state_rejects_bad_state():
    stats = LengthStats(0.3)
    good = {"alpha": 0.3, "values": {"q": 2.0}, "counts": {"q": 1}}
    with pytest.raises(ValueError, match=r"state alpha=0.5 differs from this LengthStats alpha=0.3"):
        stats.load_state_dict({**good, "alpha": 0.5})
    with pytest.raises(ValueError, match=r"missing keys \['counts'\]"):
        stats.load_state_dict({"alpha": 0.3, "values": {}})
    with pytest.raises(ValueError, match="values and counts have different keys"):
        stats.load_state_dict({**good, "counts": {"r": 1}})
    with pytest.raises(ValueError, match=r"state values\['q'\]=-2.0 is below 0.0"):
        stats.load_state_dict({**good, "values": {"q": -2.0}})
    with pytest.raises(ValueError, match=r"state counts\['q'\]=0 is below 1"):
        stats.load_state_dict({**good, "counts": {"q": 0}})
    assert len(stats) == 0  # a rejected state leaves the table untouched
    with pytest.raises(ValueError, match="alpha=2.0 is outside"):
        LengthStats.from_state_dict({**good, "alpha": 2.0})
