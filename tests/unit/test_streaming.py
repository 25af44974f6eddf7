"""Pure streaming rules: global indexing, wave cutting, token-chunk eligibility and chunk spans."""

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openrlhf_darts.core.selection import select_dual_end
from openrlhf_darts.core.streaming import WaveScheduler, chunk_eligible, chunk_spans, sample_index

pytestmark = pytest.mark.unit


# ---- indexing ------------------------------------------------------------------------------------------------------
def test_sample_index_hand_cases():
    # n = 4: group arriving 3rd (slot 2), rank 1 -> 2 * 4 + 1 = 9; first group's first sample -> 0.
    assert sample_index(2, 1, 4) == 9
    assert sample_index(0, 0, 4) == 0
    with pytest.raises(ValueError, match="rank=4"):
        sample_index(0, 4, 4)


@given(st.integers(1, 16), st.permutations(list(range(12))))
def test_indices_are_contiguous_per_group_whatever_the_completion_order(n, completion_order):
    # Groups finish in any order; slots are assigned on arrival. Every group's indices form one block of n, and the
    # blocks tile [0, groups * n): upstream's reshape(-1, n) sees whole groups.
    slot_of = {group: slot for slot, group in enumerate(completion_order)}
    indices = {g: [sample_index(slot_of[g], r, n) for r in range(n)] for g in completion_order}
    for g, idx in indices.items():
        assert idx == list(range(slot_of[g] * n, slot_of[g] * n + n))
    assert sorted(i for idx in indices.values() for i in idx) == list(range(len(completion_order) * n))


# ---- waves ---------------------------------------------------------------------------------------------------------
def test_waves_hand_case():
    # 4 groups of n=4 (16 samples), micro-batch 2 -> 8 micro-batches; 2 DP actors -> waves of >= 2 micro-batches.
    # Group 1 (4 samples = 2 mb): release [0, 4); group 2: [4, 8); group 3: [8, 12); group 4 completes the step.
    waves = WaveScheduler(16, 2, 2)
    got = [w for _ in range(4) for w in waves.add(4)]
    assert [(w.start, w.end) for w in got] == [(0, 4), (4, 8), (8, 12), (12, 16)]


def test_waves_hold_back_so_the_last_wave_is_big_enough():
    # 12 samples, micro-batch 1, 4 actors: after 8 samples, releasing mb [4, 8) would leave 4 -> ok; after 9 samples
    # with 5 ready and only 3 left expected (< 4) the scheduler must wait; the final wave then has 4+ micro-batches.
    waves = WaveScheduler(12, 1, 4)
    assert [(w.start, w.end) for w in waves.add(4)] == [(0, 4)]
    assert [(w.start, w.end) for w in waves.add(5)] == []  # 9 arrived: 5 ready, 3 left -> wait
    assert [(w.start, w.end) for w in waves.add(3)] == [(4, 12)]


def test_waves_reject_a_step_smaller_than_the_actor_count():
    with pytest.raises(ValueError, match="fewer than the 4 data-parallel actors"):
        WaveScheduler(6, 2, 4)  # 6 samples / 2 = 3 micro-batches < 4 actors


@given(
    st.integers(1, 8),  # n
    st.integers(1, 12),  # prompts
    st.integers(1, 5),  # micro-batch size
    st.integers(1, 6),  # data-parallel actors
    st.integers(0, 3),  # prompts missing at the end (exhausted dataloader)
)
def test_waves_reassemble_upstreams_micro_batches(n, prompts, mb, dp, missing):
    expected = n * prompts
    if -(-expected // mb) < dp:
        with pytest.raises(ValueError):
            WaveScheduler(expected, mb, dp)
        return
    waves = WaveScheduler(expected, mb, dp)
    arrived = max(1, prompts - missing)
    out = [w for _ in range(arrived) for w in waves.add(n)]
    out += waves.flush()
    # Waves tile [0, arrived * n) in order.
    assert [w.start for w in out] == [0] + [w.end for w in out[:-1]]
    assert out[-1].end == arrived * n
    # Every wave boundary but the stream's end is a micro-batch boundary, so the micro-batches are upstream's.
    for w in out:
        assert w.start % mb == 0
        assert w.end % mb == 0 or w.end == arrived * n
        assert w.num_micro_batches == -(-(w.end - w.start) // mb)
    # When the full step arrived, every wave has at least one micro-batch per data-parallel actor.
    if arrived == prompts:
        assert all(w.num_micro_batches >= dp for w in out)
    assert waves.flush() == []


# ---- token chunks --------------------------------------------------------------------------------------------------
def test_chunk_eligible_hand_cases():
    # Dual-end group, M' = 10, n = 8, L = 1. Nine finished; the longest valid finish is (30, 4) -> key (0, 30, 4).
    finished = [(0, length, j) for j, length in zip([0, 1, 2, 3, 4, 5, 6, 7, 8], [5, 9, 3, 7, 30, 11, 2, 8, 6])]
    assert chunk_eligible(10, 8, 1, 1, (31, 9), finished)  # 31 > 30: nothing can end above it
    assert chunk_eligible(10, 8, 1, 1, (30, 9), finished)  # a tie at 30, and index 9 > 4 orders after
    # A sibling that waited in the queue and runs last, at 12 tokens, could still end at 12 < 30: not yet the long end.
    assert not chunk_eligible(10, 8, 1, 1, (12, 9), finished)
    # Two still running (the other one may end longer) with L = 1: neither is certain.
    assert not chunk_eligible(10, 8, 1, 2, (31, 8), finished[:8])
    # L = 2, two running, nothing finished above 31: both fit in the long end.
    assert chunk_eligible(10, 8, 2, 2, (31, 8), finished[:8])
    # L = 2, one running at 12 tokens, one finish (30) above it: 0 others + 1 above < 2 -> certain.
    assert chunk_eligible(10, 8, 2, 1, (12, 9), finished)
    # long_end: a truncated finish (1, 40, 3) ranks above any running candidate, so with L = 1 none is certain.
    assert not chunk_eligible(4, 3, 1, 1, (39, 0), [(0, 5, 1), (0, 6, 2), (1, 40, 3)])
    # M' = n: nothing is dropped, every candidate is kept from the start.
    assert chunk_eligible(8, 8, 0, 8, (0, 0), [])
    # Shortest-only with surplus: any running candidate may still be aborted.
    assert not chunk_eligible(12, 8, 0, 1, (50, 11), [(0, 1, j) for j in range(11)])
    with pytest.raises(ValueError, match="num_running=3 must lie in"):
        chunk_eligible(4, 3, 1, 3, (1, 0), [(0, 1, 1), (0, 1, 2)])


CAP = 5  # brute force: valid lengths 1..CAP-1, a truncated candidate stops at CAP


def decode_stream_case(raw: bytes):
    """A dual-end or shortest-only group mid-flight, from 18 bytes: finished candidates (length, truncated) and
    running ones (progress <= CAP - 2, so any sibling can still end above any running candidate)."""
    num_candidates = 2 + raw[0] % 4
    num_keep = 1 + raw[1] % num_candidates
    num_long = raw[2] % num_keep
    rule = ("exclude", "long_end")[raw[3] % 2]
    num_running = 1 + raw[4] % num_candidates
    running = sorted(random.Random(raw[5]).sample(range(num_candidates), num_running))
    finished = {
        j: (CAP, True) if raw[6 + j] >= 200 else (1 + raw[6 + j] % (CAP - 1), False)
        for j in range(num_candidates)
        if j not in running
    }
    progress = {j: raw[12 + k] % (CAP - 1) for k, j in enumerate(running)}
    return num_candidates, num_keep, num_long, rule, finished, progress


def completions(progress, rule_allows_truncated_r, r):
    """Every way the running candidates can end: valid at a length >= their progress, or truncated at CAP."""
    options = []
    for j, g in progress.items():
        ends = [(length, False) for length in range(max(1, g), CAP)]
        if j != r or rule_allows_truncated_r:
            ends.append((CAP, True))
        options.append([(j, end) for end in ends])
    return itertools.product(*options)


@given(st.binary(min_size=18, max_size=18).map(decode_stream_case))
def test_chunk_eligibility_against_brute_force(case):
    num_candidates, num_keep, num_long, rule, finished, progress = case
    if rule == "exclude":
        ranked = sorted((0, length, j) for j, (length, cut) in finished.items() if not cut)
    else:
        ranked = sorted((int(cut), length, j) for j, (length, cut) in finished.items())
    for r, g in progress.items():
        eligible = chunk_eligible(num_candidates, num_keep, num_long, len(progress), (g, r), ranked)
        # Under exclude, eligibility promises nothing for a candidate that ends truncated (documented caveat).
        kept_always, long_end_always = True, True
        for ends in completions(progress, rule == "long_end", r):
            final = {**finished, **dict(ends)}
            lengths = [final[j][0] for j in range(num_candidates)]
            cut = [final[j][1] for j in range(num_candidates)]
            kept_always &= r in select_dual_end(lengths, cut, num_keep, num_long, rule)
            competing = sorted(
                (int(cut[j]), lengths[j], j) for j in range(num_candidates) if rule == "long_end" or not cut[j]
            )
            long_end_always &= r in [key[2] for key in competing[len(competing) - num_long :]] if num_long else False
            if not (kept_always or long_end_always):
                break  # both already refuted
        if eligible:
            assert kept_always  # sound: a streamed candidate is kept whatever its siblings do
        if num_candidates > num_keep and num_long > 0:
            assert eligible == long_end_always  # exact: certain to be among the L longest, not assuming lockstep
        if num_candidates == num_keep:
            assert eligible and kept_always


def test_chunk_spans_hand_case():
    # Prompt 5, chunk 4: after 9 generated tokens -> [0, 9) (prompt + 4), [9, 13); 14 total, 1 left for the finish.
    assert chunk_spans(5, 9, 0, 4, finished=False) == [(0, 9), (9, 13)]
    assert chunk_spans(5, 9, 13, 4, finished=True) == [(13, 14)]
    assert chunk_spans(5, 2, 0, 4, finished=True) == [(0, 7)]


@given(st.integers(1, 20), st.integers(1, 10), st.lists(st.integers(0, 7), min_size=1, max_size=12))
def test_chunk_spans_tile_the_sequence(prompt, chunk, increments):
    # Decode in random increments, sending what is ready after each; the finish sends the rest.
    sent, generated, spans = 0, 0, []
    for step in increments:
        generated += step
        new = chunk_spans(prompt, generated, sent, chunk, finished=False)
        for start, end in new:
            assert end - start == chunk + (prompt if start == 0 else 0)  # only full chunks while decoding
        spans += new
        sent = spans[-1][1] if spans else 0
    spans += chunk_spans(prompt, generated, sent, chunk, finished=True)
    assert spans[0][0] == 0 and spans[-1][1] == prompt + generated
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
