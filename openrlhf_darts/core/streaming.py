"""Which finished samples go to scoring, in which waves and chunks (spec 3(g), step 5 of the pipeline).

Standard library only. Three small rules, each used by the streaming experience maker and tested on its own:

* **Indexing.** A kept sample's global index is `slot * n + rank`: the arrival slot of its group times the group size
  plus its rank inside the group, so upstream's per-prompt reshape (`rewards.reshape(-1, n)`) sees contiguous groups
  whatever order the groups finished in. A group's rank order is its arrival order: the K short members released
  before the group ended first, then the rest, each part in ascending candidate index.
* **Waves** (`StreamLayout`). The batch is cut into micro-batches of `micro_batch_size` consecutive indices, exactly
  as upstream's `split_rollout_samples` cuts the whole batch, so every micro-batch (and its padding) is the one the
  non-streamed path builds over the same order. A micro-batch is ready once all its samples arrived, which need not
  happen in index order (a group's short end arrives before its long end, and other groups' samples in between). A
  wave is released once at least `min_micro_batches` ready micro-batches wait (upstream's
  `RayActorGroup.async_run_method_batch` needs at least one per data-parallel actor), and never so early that the
  micro-batches still to come would form a final wave smaller than that. The waves are joined in index order at
  collection. A group dropped by dynamic filtering after its short end was released leaves its slot to the next
  group; results holding its samples are wasted.
* **Token chunks.** A still-decoding candidate may be scored chunk by chunk once it is certain to be kept: in any
  group with `num_candidates == num_keep` (nothing is dropped), and in a dual-end group once fewer than L candidates
  can still end above it by (length, index): the other running ones, plus the finishes that order after its current
  progress (`chunk_eligible`; siblings need not decode in lockstep). Chunks are spans of the full sequence; the first one carries
  the prompt plus `chunk_tokens` response tokens, later ones `chunk_tokens` each, and the last one the remainder.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass


def sample_index(slot: int, rank: int, num_keep: int) -> int:
    """Global index of the `rank`-th kept sample of the group that arrived `slot`-th (0-based): slot * n + rank."""
    if num_keep < 1:
        raise ValueError(f"num_keep={num_keep} must be >= 1")
    if not 0 <= rank < num_keep:
        raise ValueError(f"rank={rank} must lie in [0, num_keep={num_keep})")
    if slot < 0:
        raise ValueError(f"slot={slot} must be >= 0")
    return slot * num_keep + rank


@dataclass(frozen=True)
class MicroBatch:
    """Samples [start, start + len(samples)) of the batch in index order: one of upstream's micro-batches."""

    start: int
    samples: tuple  # sample handles (hashable, e.g. ints), in index order


@dataclass(frozen=True)
class Wave:
    """Micro-batches sent to scoring together, in index order; not necessarily adjacent (their groups are incomplete
    in between)."""

    micro_batches: tuple[MicroBatch, ...]

    @property
    def num_micro_batches(self) -> int:
        return len(self.micro_batches)

    @property
    def num_samples(self) -> int:
        return sum(len(mb.samples) for mb in self.micro_batches)


class StreamLayout:
    """Where each sample of one step sits in the batch, and which micro-batches to score when (module docstring).

    A group takes a slot when its first samples arrive: the lowest slot a dropped group left free, else the next
    one. Its samples occupy global indices `slot * n + rank` in arrival order, so a short end released before the
    rest of its group (ranks 0..K-1) already has its final indices. The batch of `expected_groups * n` samples is cut
    into micro-batches of `micro_batch_size` consecutive indices, as upstream's `split_rollout_samples` cuts the whole
    batch; a micro-batch is ready once every index in it holds a sample, whatever the order of arrival. Ready
    micro-batches are released as one wave once at least `min_micro_batches` wait, never leaving fewer than that still
    to come (the final wave would otherwise be short), and at once when nothing else is to come.

    A scored micro-batch is remembered by its content (the tuple of its samples), so a result stays valid exactly as
    long as upstream's cut would put the same samples together. `drop(group)` (dynamic filtering judged a group whose
    short end was already released) empties its slot: results holding its samples are no longer used (wasted). At
    `close` the groups are packed into slots 0..G-1 in slot order (a slot left free by a drop nobody refilled is
    closed up, and the batch may hold fewer than `expected_groups` groups), and every micro-batch of that final layout
    not yet scored forms the last wave. Handles are opaque and hashable; each may appear once per step.
    """

    def __init__(self, group_size: int, expected_groups: int, micro_batch_size: int, min_micro_batches: int):
        for name, value in (
            ("group_size", group_size),
            ("expected_groups", expected_groups),
            ("micro_batch_size", micro_batch_size),
            ("min_micro_batches", min_micro_batches),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an int >= 1")
        expected_mb = -(-expected_groups * group_size // micro_batch_size)
        if expected_mb < min_micro_batches:
            raise ValueError(
                f"{expected_groups * group_size} samples make {expected_mb} micro-batches of {micro_batch_size}, "
                f"fewer than the {min_micro_batches} data-parallel actors; raise --rollout.batch_size or lower "
                "--rollout.micro_batch_size (upstream needs at least one micro-batch per actor)"
            )
        self.group_size = group_size
        self.expected_groups = expected_groups
        self.micro_batch_size = micro_batch_size
        self.min_micro_batches = min_micro_batches
        self._total = expected_groups * group_size  # samples of the layout micro-batches are cut from
        self._slot: dict = {}  # group -> slot
        self._members: dict = {}  # group -> its handles in rank order
        self._free: list[int] = []  # slots dropped groups left, a heap
        self._next_slot = 0
        self._at: dict[int, object] = {}  # global index -> handle
        self._seen: set = set()
        self._done: set[tuple] = set()  # contents of the micro-batches released so far
        self._ready: dict[int, MicroBatch] = {}  # micro-batch number -> its content, complete and not released
        self._scored: set[int] = set()  # micro-batch numbers whose current content was released
        self._undone = expected_mb  # micro-batches of the layout whose current content was not released
        self.closed = False
        self.waves: list[Wave] = []

    # ---- events ---------------------------------------------------------------------------------------------------
    def add(self, group, samples) -> list[Wave]:
        """`samples` (handles) of `group` arrived, in rank order after those it already has; returns the waves to
        release now (zero or one)."""
        self._require_open()
        members = self._members.get(group)
        if members is None:
            if len(self._slot) >= self.expected_groups:
                raise ValueError(
                    f"group {group!r} would be group {len(self._slot) + 1} of a step that expects "
                    f"{self.expected_groups}; the samples generator returns at most --rollout.batch_size groups"
                )
            slot = heapq.heappop(self._free) if self._free else self._next_slot
            self._next_slot = max(self._next_slot, slot + 1)
            self._slot[group], members = slot, self._members.setdefault(group, [])
        if not samples or len(members) + len(samples) > self.group_size:
            raise ValueError(
                f"group {group!r}: {len(samples)} samples after {len(members)} would not make a part of a group of "
                f"n={self.group_size}"
            )
        base = self._slot[group] * self.group_size
        for handle in samples:
            if handle in self._seen:
                raise ValueError(f"sample {handle!r} was added twice")
            self._seen.add(handle)
            self._at[base + len(members)] = handle
            members.append(handle)
        self._refresh(base + len(members) - len(samples), base + len(members))
        return self._release()

    def drop(self, group) -> list[Wave]:
        """`group` leaves the batch (dynamic filtering); its slot goes to the next new group. Returns the waves to
        release now: fewer micro-batches are complete, so a held-back wave may no longer leave a short final one."""
        self._require_open()
        if group not in self._slot:
            raise ValueError(f"group {group!r} has no samples in this step's layout")
        slot = self._slot.pop(group)
        members = self._members.pop(group)
        base = slot * self.group_size
        for rank in range(len(members)):
            del self._at[base + rank]
        heapq.heappush(self._free, slot)
        self._refresh(base, base + len(members))
        return self._release()

    def close(self) -> list[Wave]:
        """Generation ended: pack the groups, and return the last wave (every micro-batch not yet scored)."""
        self._require_open()
        partial = [g for g, m in self._members.items() if len(m) != self.group_size]
        if partial:
            raise ValueError(
                f"groups {partial[:8]} have fewer than n={self.group_size} samples at the end of the step"
            )
        self.closed = True
        order = sorted(self._slot, key=self._slot.get)
        self._slot = {group: slot for slot, group in enumerate(order)}
        self._at = {
            slot * self.group_size + rank: handle
            for group, slot in self._slot.items()
            for rank, handle in enumerate(self._members[group])
        }
        self._total = len(order) * self.group_size
        rest = tuple(mb for mb in self.micro_batches() if mb.samples not in self._done)
        return [self._cut(rest)] if rest else []

    # ---- the layout -----------------------------------------------------------------------------------------------
    def micro_batches(self) -> list[MicroBatch]:
        """After `close`: upstream's micro-batches of the final batch, in index order."""
        if not self.closed:
            raise ValueError("micro_batches() describes the final layout; call close() first")
        size = self.micro_batch_size
        return [
            MicroBatch(start, tuple(self._at[i] for i in range(start, min(start + size, self._total))))
            for start in range(0, self._total, size)
        ]

    def order(self) -> list:
        """After `close`: the handles in global index order."""
        return [handle for mb in self.micro_batches() for handle in mb.samples]

    def index_of(self, group) -> list[int]:
        """Global indices of `group`'s samples so far, in rank order (final only after `close`)."""
        base = self._slot[group] * self.group_size
        return list(range(base, base + len(self._members[group])))

    # ---- internals ------------------------------------------------------------------------------------------------
    def _require_open(self) -> None:
        if self.closed:
            raise ValueError("the layout is closed; open a new one for the next step")

    def _refresh(self, start: int, end: int) -> None:
        """Recompute the state of the micro-batches overlapping indices [start, end): scored, ready or open."""
        size = self.micro_batch_size
        for m in range(start // size, -(-end // size)):
            first = m * size
            content = tuple(self._at.get(i) for i in range(first, min(first + size, self._total)))
            self._ready.pop(m, None)
            if m in self._scored:
                self._scored.discard(m)
                self._undone += 1
            if None in content:
                continue
            if content in self._done:
                self._scored.add(m)
                self._undone -= 1
            else:
                self._ready[m] = MicroBatch(first, content)

    def _release(self) -> list[Wave]:
        ready = len(self._ready)
        left = self._undone - ready
        if ready and (left == 0 or (ready >= self.min_micro_batches and left >= self.min_micro_batches)):
            wave = self._cut(tuple(self._ready[m] for m in sorted(self._ready)))
            self._scored.update(self._ready)
            self._undone = left
            self._ready.clear()
            return [wave]
        return []

    def _cut(self, micro_batches: tuple[MicroBatch, ...]) -> Wave:
        wave = Wave(micro_batches)
        self._done.update(mb.samples for mb in micro_batches)
        self.waves.append(wave)
        return wave


def chunk_eligible(
    num_candidates: int,
    num_keep: int,
    num_long: int,
    num_running: int,
    candidate: tuple[int, int],
    finished: Sequence[tuple[int, int, int]],
) -> bool:
    """True when the running candidate `candidate` = (progress, index) is certain to be kept (module docstring).

    `num_running` counts the group's candidates that have neither finished nor been aborted, this one included;
    `finished` holds the (truncated, length, index) keys of the finishes that compete for the long end (the
    untruncated ones under `--darts.truncated exclude`, every one under `long_end`; `GroupSelector.ranked_finishes`).

    A group with `num_candidates == num_keep` keeps everything. A shortest-only group with surplus candidates is never
    eligible: any running candidate may still be aborted. A dual-end candidate r with progress g ends at least g long,
    so at most the other running candidates plus the finishes ordering after (0, g, r) can end above it; it is certain
    to be among the L longest when those are fewer than L. With L = 1 that reads: nothing else runs, and g exceeds the
    longest competing finish, or equals its length with a higher index. Siblings need not decode in lockstep: one that
    waited in the engine's queue and still runs keeps the others from streaming until it overtakes them or stops.
    Under `exclude` truncation can still drop an eligible candidate (a capped candidate loses to valid ones); the
    caller then releases its cache and counts its scored tokens as wasted.
    """
    if not 1 <= num_keep <= num_candidates:
        raise ValueError(f"num_keep={num_keep} must lie in [1, num_candidates={num_candidates}]")
    if not 0 <= num_long < num_keep:
        raise ValueError(f"num_long={num_long} must lie in [0, num_keep={num_keep})")
    if not 1 <= num_running <= num_candidates - len(finished):
        raise ValueError(
            f"num_running={num_running} must lie in [1, num_candidates - finishes = {num_candidates - len(finished)}]"
        )
    if num_candidates == num_keep:
        return True
    if num_long == 0:
        return False
    progress, index = candidate
    above = sum(1 for key in finished if key > (0, progress, index))
    return (num_running - 1) + above < num_long


def chunk_spans(
    prompt_tokens: int, generated: int, sent: int, chunk_tokens: int, finished: bool
) -> list[tuple[int, int]]:
    """Spans [start, end) of the full sequence (prompt + response) to send now, given `sent` tokens already sent.

    Full chunks only while decoding; on `finished` the remainder too. The spans of a whole sample tile
    [0, prompt_tokens + generated) without gap or overlap.
    """
    if prompt_tokens < 1 or generated < 0 or chunk_tokens < 1:
        raise ValueError(
            f"prompt_tokens={prompt_tokens} (>= 1), generated={generated} (>= 0), chunk_tokens={chunk_tokens} (>= 1)"
        )
    total = prompt_tokens + generated
    if not (sent == 0 or prompt_tokens <= sent <= total):
        raise ValueError(f"sent={sent} must be 0 or lie in [prompt_tokens={prompt_tokens}, {total}]")
    spans = []
    start = sent
    while True:
        end = (prompt_tokens if start == 0 else start) + chunk_tokens
        if end <= total:
            spans.append((start, end))
            start = end
            continue
        if finished and start < total:
            spans.append((start, total))
        return spans
