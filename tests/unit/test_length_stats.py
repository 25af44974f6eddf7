"""Per-prompt EMA of length spread (§3(d) 1-2) over the censored fit, and the checkpoint round trip and migration."""

import json
import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openrlhf_darts.core.length_fit import fit_lengths
from openrlhf_darts.core.length_stats import STATE_VERSION, LengthStats

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


def lognormal_std(lengths):
    """The fit's spread of an uncensored group in closed form: log(1 + l) has sample mean m and sample std s, and the
    log-normal std is e^(m + s^2/2) sqrt(e^(s^2) - 1) (test_length_fit checks the fit against this)."""
    ys = [math.log1p(length) for length in lengths]
    m, s = statistics.fmean(ys), statistics.stdev(ys)
    return math.exp(m + s * s / 2) * math.sqrt(math.expm1(s * s))


def test_hand_example_ema():
    stats = LengthStats(alpha=0.5)
    s1, s2 = lognormal_std([2, 4, 6]), lognormal_std([0, 6, 12])
    assert stats.update("q", [2, 4, 6]) is True and stats.std("q") == pytest.approx(s1, rel=1e-6)  # first sets v
    assert stats.update("q", [0, 6, 12]) is True
    assert stats.std("q") == pytest.approx(0.5 * s2 + 0.5 * s1, rel=1e-6)  # v = alpha * s + (1 - alpha) * v
    before = stats.std("q")
    assert stats.update("q", [7]) is False and stats.std("q") == before  # one length has no spread
    assert stats.update("q", [4, 4]) is True and stats.std("q") == 0.5 * before  # spread 0 -> 0.5 * 0 + 0.5 * v
    assert len(stats) == 1 and "q" in stats and "r" not in stats


def test_a_censored_group_can_lower_v():
    stats = LengthStats(alpha=0.3)
    stats.update("q", [10, 100, 400, 900])  # a wide prompt
    wide = stats.std("q")
    # Now a calm group of a pruned prompt: 8 finished near 100, 4 aborted at the release length 106. Before issue 11 a
    # censored group could only raise v; its fitted spread (about 10 tokens) is far below v, and v must fall.
    lengths = [95, 97, 99, 100, 101, 102, 104, 105, 106, 106, 106, 106]
    censored = [False] * 8 + [True] * 4
    assert stats.update("q", lengths, censored) is True
    assert stats.std("q") == pytest.approx(0.3 * fit_lengths(lengths, censored).std + 0.7 * wide, rel=1e-12)
    assert stats.std("q") < 0.75 * wide
    # Every candidate censored and no cap: nothing bounds the lengths, the group is skipped. With the cap they all hit,
    # the spread is 0 (every candidate would have stopped at the cap) and v falls.
    before = stats.std("q")
    assert stats.update("q", [64, 64], [True, True]) is False and stats.std("q") == before
    assert stats.update("q", [64, 64], [True, True], cap=64) is True and stats.std("q") == 0.7 * before


def test_weights_for_unseen_prompts_use_the_mean():
    stats = LengthStats()
    assert stats.weights(["a", "b"]) == [0.0, 0.0] and stats.mean_std() == 0.0  # nothing known -> uniform zeros
    stats.update("a", [2, 4, 6])
    stats.update("b", [0, 6, 12])
    v_a, v_b = stats.std("a"), stats.std("b")
    # Unseen "c" gets the mean of the known v's.
    assert stats.weights(["b", "c", "a"]) == [v_b, (v_a + v_b) / 2, v_a] and stats.mean_std() == (v_a + v_b) / 2
    assert stats.std("c") is None


@given(update_streams, alphas, st.sampled_from([None, 255]))
def test_ema_folds_the_fitted_spread(updates, alpha, cap):
    stats = LengthStats(alpha)
    for key, lengths, censored in updates:
        before = stats.std(key)
        changed = stats.update(key, lengths, censored, cap)
        after = stats.std(key)
        fit = fit_lengths(lengths, censored, cap)
        if len(lengths) < 2 or fit is None:
            assert (changed, after) == (False, before)
        elif before is None:
            assert (changed, after) == (True, fit.std)
        else:
            assert after == alpha * fit.std + (1 - alpha) * before and changed == (after != before)
        assert after is None or after >= 0.0


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
    stats.update("q", [1, 1], censored=[True, True])  # skipped: all censored, no cap
    stats.update("q", [1, 2], censored=[True, False])
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
    with pytest.raises(ValueError, match=r"lengths \[9\] exceed cap=8"):
        stats.update("q", [1, 9], cap=8)
    assert len(stats) == 0


def test_load_state_rejects_bad_state():
    stats = LengthStats(0.3)
    good = {"version": STATE_VERSION, "alpha": 0.3, "values": {"q": 2.0}, "counts": {"q": 1}}
    with pytest.raises(ValueError, match=r"state alpha=0.5 differs from this LengthStats alpha=0.3"):
        stats.load_state_dict({**good, "alpha": 0.5})
    with pytest.raises(ValueError, match=r"missing keys \['counts'\]"):
        stats.load_state_dict({"version": STATE_VERSION, "alpha": 0.3, "values": {}})
    with pytest.raises(ValueError, match="values and counts have different keys"):
        stats.load_state_dict({**good, "counts": {"r": 1}})
    with pytest.raises(ValueError, match=r"state values\['q'\]=-2.0 is below 0.0"):
        stats.load_state_dict({**good, "values": {"q": -2.0}})
    with pytest.raises(ValueError, match=r"state counts\['q'\]=0 is below 1"):
        stats.load_state_dict({**good, "counts": {"q": 0}})
    assert len(stats) == 0  # a rejected state leaves the table untouched
    with pytest.raises(ValueError, match="alpha=2.0 is outside"):
        LengthStats.from_state_dict({**good, "alpha": 2.0})


def test_old_scale_states_are_refused():
    # A checkpoint written before issue 11 has no version: its v_i are raw stds of censored groups, biased low for
    # pruned prompts. Loading it would mix two scales in one table, so it is refused with the way out.
    old = {"alpha": 0.3, "values": {"q": 2.0}, "counts": {"q": 1}}
    stats = LengthStats(0.3)
    for load in (stats.load_state_dict, LengthStats.from_state_dict):
        with pytest.raises(ValueError) as info:
            load(old)
        message = str(info.value)
        assert "written before versions were recorded (version 1)" in message
        assert "drop the 'darts_planner' entry" in message
    with pytest.raises(ValueError, match="written as 3, but this build reads version 2"):
        stats.load_state_dict({**old, "version": 3})
    assert len(stats) == 0
