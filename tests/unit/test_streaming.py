"""Pure streaming rules: global indexing, wave cutting, token-chunk eligibility and chunk spans."""

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openrlhf_darts.core.selection import select_dual_end
from openrlhf_darts.core.streaming import StreamLayout, chunk_eligible, chunk_spans, sample_index

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
def test_waves_hand_case_groups_arrive_whole():
    # 4 groups of n=4 (16 samples), micro-batch 2 -> 8 micro-batches; 2 DP actors -> waves of >= 2 micro-batches.
    # Each whole group fills 2 micro-batches: a wave per group, in index order.
    layout = StreamLayout(4, 4, 2, 2)
    got = [w for g in range(4) for w in layout.add(g, [4 * g + r for r in range(4)])]
    assert [[mb.start for mb in w.micro_batches] for w in got] == [[0, 2], [4, 6], [8, 10], [12, 14]]
    assert layout.close() == [] and layout.order() == list(range(16))


def test_waves_hand_case_short_ends_first():
    # n=4, K=3 (L=1), micro-batch 2, 2 DP actors. Group "a" releases its short end a0..a2 (slot 0, indices 0-2):
    # micro-batch [0, 2) is ready, [2, 4) waits for a's long end. One ready < 2 actors: held.
    layout = StreamLayout(4, 4, 2, 2)
    assert layout.add("a", ["a0", "a1", "a2"]) == []
    # Group "b"'s short end takes slot 1 (indices 4-6): micro-batches [0, 2) and [4, 6) are ready -> one wave, while
    # both groups' long ends still decode. 6 micro-batches stay to come (>= 2).
    (wave,) = layout.add("b", ["b0", "b1", "b2"])
    assert [(mb.start, mb.samples) for mb in wave.micro_batches] == [(0, ("a0", "a1")), (4, ("b0", "b1"))]
    # b's long end completes [6, 8); a's completes [2, 4): 2 ready, 4 to come -> released.
    assert layout.add("b", ["b3"]) == []
    (wave,) = layout.add("a", ["a3"])
    assert [(mb.start, mb.samples) for mb in wave.micro_batches] == [(2, ("a2", "a3")), (6, ("b2", "b3"))]
    # Groups c and d arrive whole: [8, 12) then [12, 16).
    assert len(layout.add("c", ["c0", "c1", "c2", "c3"])) == 1
    assert len(layout.add("d", ["d0", "d1", "d2", "d3"])) == 1
    assert layout.close() == []
    # Final order: each group contiguous, short end first.
    assert layout.order() == [f"{g}{r}" for g in "abcd" for r in range(4)]


def test_waves_hold_back_so_the_last_wave_is_big_enough():
    # 12 samples (3 groups of 4), micro-batch 1, 4 actors. Group 0 fills 4 micro-batches: released (8 left). Group 1's
    # 3-sample short end: 3 ready < 4, held; its long end: 4 ready but only 4 left after -> released... and group 2
    # arriving as 1 + 3: after its first sample, 1 ready and 3 left (< 4) -> wait; the final wave has 4.
    layout = StreamLayout(4, 3, 1, 4)
    assert [w.num_micro_batches for w in layout.add(0, [0, 1, 2, 3])] == [4]
    assert layout.add(1, [4, 5, 6]) == []
    assert [w.num_micro_batches for w in layout.add(1, [7])] == [4]
    assert layout.add(2, [8]) == []
    assert [w.num_micro_batches for w in layout.add(2, [9, 10, 11])] == [4]


def test_dropped_group_leaves_its_slot_and_its_scored_micro_batches_are_wasted():
    # n=4, micro-batch 2, 1 actor (eager). "a"'s short end scores [0, 2); "a" is then dropped by dynamic filtering.
    layout = StreamLayout(4, 2, 2, 1)
    (wave,) = layout.add("a", ["a0", "a1", "a2"])
    assert [mb.samples for mb in wave.micro_batches] == [("a0", "a1")]
    # "b" arrives whole and takes slot 1 (indices 4-7) while "a"'s long end still decodes.
    assert [mb.samples for w in layout.add("b", ["b0", "b1", "b2", "b3"]) for mb in w.micro_batches] == [
        ("b0", "b1"),
        ("b2", "b3"),
    ]
    layout.add("a", ["a3"])  # [2, 4) = (a2, a3) scored
    assert layout.drop("a") == []
    # The replacement "r" takes the slot "a" left.
    assert [mb.samples for w in layout.add("r", ["r0", "r1", "r2", "r3"]) for mb in w.micro_batches] == [
        ("r0", "r1"),
        ("r2", "r3"),
    ]
    assert layout.close() == []
    assert layout.order() == ["r0", "r1", "r2", "r3", "b0", "b1", "b2", "b3"]
    used = {mb.samples for mb in layout.micro_batches()}
    wasted = [mb.samples for w in layout.waves for mb in w.micro_batches if mb.samples not in used]
    assert wasted == [("a0", "a1"), ("a2", "a3")]


def test_close_packs_groups_left_after_a_drop():
    # n=3, 3 groups expected (9 samples), micro-batch 2, 1 actor (eager): micro-batches [0,2) [2,4) [4,6) [6,8) [8,9).
    def run(replace: bool):
        layout = StreamLayout(3, 3, 2, 1)
        layout.add("a", ["a0", "a1"])  # slot 0: [0,2) = (a0, a1) scored
        layout.add("b", ["b0", "b1", "b2"])  # slot 1, indices 3-5: [4,6) = (b1, b2) scored, [2,4) = (-, b0) open
        layout.add("a", ["a2"])  # [2,4) = (a2, b0) scored
        layout.drop("a")  # dynamic filtering: slot 0 is free, three scored micro-batches hold a's samples
        if replace:
            layout.add("c", ["c0", "c1", "c2"])  # slot 0 again: (c0, c1) and (c2, b0) scored
        return layout, layout.close()

    # Replaced: the third group never came, so the batch holds 6 samples; everything it needs was scored already.
    layout, last = run(replace=True)
    assert last == [] and layout.order() == ["c0", "c1", "c2", "b0", "b1", "b2"]
    assert [mb.samples for mb in layout.micro_batches()] == [("c0", "c1"), ("c2", "b0"), ("b1", "b2")]
    # Not replaced: b moves to slot 0 and the batch is re-cut into (b0, b1), (b2): both new, scored in the last wave.
    layout, (last,) = run(replace=False)
    assert layout.order() == ["b0", "b1", "b2"]
    assert [(mb.start, mb.samples) for mb in last.micro_batches] == [(0, ("b0", "b1")), (2, ("b2",))]
    used = {mb.samples for mb in layout.micro_batches()}
    wasted = [mb.samples for w in layout.waves for mb in w.micro_batches if mb.samples not in used]
    assert wasted == [("a0", "a1"), ("b1", "b2"), ("a2", "b0")]


def test_layout_rejects_bad_input():
    with pytest.raises(ValueError, match="fewer than the 4 data-parallel actors"):
        StreamLayout(2, 3, 2, 4)  # 6 samples / 2 = 3 micro-batches < 4 actors
    with pytest.raises(ValueError, match="micro_batch_size=0"):
        StreamLayout(2, 3, 0, 1)
    layout = StreamLayout(2, 1, 1, 1)
    layout.add("a", [1])
    with pytest.raises(ValueError, match="added twice"):
        layout.add("a", [1])
    with pytest.raises(ValueError, match="would not make a part"):
        layout.add("a", [2, 3])
    with pytest.raises(ValueError, match="would be group 2 of a step that expects 1"):
        layout.add("b", [4])
    with pytest.raises(ValueError, match="fewer than n=2 samples"):
        layout.close()


@st.composite
def streams(draw):
    """A step as the samples generator sees it: groups arrive whole or short end first, interleaved; some are dropped
    after they were complete (dynamic filtering) and replaced, some never come (exhausted dataloader)."""
    n = draw(st.integers(1, 6))
    expected = draw(st.integers(1, 8))
    mb = draw(st.integers(1, 5))
    dp = draw(st.integers(1, 4))
    missing = draw(st.integers(0, 2))
    drops = draw(st.integers(0, 3))
    rnd = draw(st.randoms(use_true_random=False))
    return n, expected, mb, dp, missing, drops, rnd


@given(streams())
def test_waves_reassemble_upstreams_micro_batches(case):
    n, expected, mb, dp, missing, drops, rnd = case
    if -(-n * expected // mb) < dp:
        with pytest.raises(ValueError):
            StreamLayout(n, expected, mb, dp)
        return
    layout = StreamLayout(n, expected, mb, dp)
    # The generator dispatches `expected - missing` prompts (the dataloader may run short); a group is dropped (dynamic
    # filtering) only once complete, and is replaced by a new prompt unless the dataloader is exhausted.
    groups, serial = {}, 0

    def new_group():
        nonlocal serial
        handles = list(range(serial, serial + n))
        serial += n
        cut = rnd.randint(1, n)
        groups[len(groups)] = [handles[:cut], handles[cut:]] if cut < n else [handles]
        return len(groups) - 1

    running = {new_group(): 0 for _ in range(max(1, expected - missing))}
    dropped, drops_left = set(), drops
    while running:
        g = rnd.choice(sorted(running))
        layout.add(g, groups[g][running[g]])
        running[g] += 1
        if dp == 1:
            # One actor: a micro-batch is scored the moment its last sample arrives, even while its groups' long
            # ends still decode (what lets a released short end hide its forwards).
            at = {
                i: h
                for h_g, parts in groups.items()
                if h_g not in dropped and (h_g not in running or running[h_g] > 0)
                for i, h in zip(layout.index_of(h_g), [h for part in parts for h in part])
            }
            total = expected * n
            spans = [range(s, min(s + mb, total)) for s in range(0, total, mb)]
            complete = {tuple(at[i] for i in span) for span in spans if all(i in at for i in span)}
            assert complete <= {m.samples for w in layout.waves for m in w.micro_batches}
        if running[g] < len(groups[g]):
            continue
        del running[g]
        if drops_left and rnd.random() < 0.5:
            drops_left -= 1
            dropped.add(g)
            layout.drop(g)
            if rnd.random() < 0.8:
                running[new_group()] = 0
    layout.close()
    final = layout.micro_batches()
    order = layout.order()
    kept = [g for g in groups if g not in dropped]
    # Every kept group is contiguous, in rank order (parts concatenated), at n-aligned indices; no dropped sample.
    assert len(order) == len(kept) * n
    blocks = [tuple(order[i : i + n]) for i in range(0, len(order), n)]
    assert sorted(blocks) == sorted(tuple(h for part in groups[g] for h in part) for g in kept)
    # The final micro-batches are upstream's cut of that order.
    assert [mb_.samples for mb_ in final] == [tuple(order[i : i + mb]) for i in range(0, len(order), mb)]
    assert [mb_.start for mb_ in final] == list(range(0, len(order), mb))
    # Each final micro-batch was scored exactly once, and only complete micro-batches were ever scored.
    released = [mb_.samples for w in layout.waves for mb_ in w.micro_batches]
    assert len(released) == len(set(released))
    assert {mb_.samples for mb_ in final} <= set(released)
    if not dropped and len(kept) == expected:
        # The whole step without drops: nothing wasted, and every wave had a micro-batch per data-parallel actor.
        assert set(released) == {mb_.samples for mb_ in final}
        assert all(w.num_micro_batches >= dp for w in layout.waves)


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
