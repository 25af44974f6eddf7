"""Which finished samples go to scoring, in which waves and chunks (spec 3(g), step 5 of the pipeline).

Standard library only. Three small rules, each used by the streaming experience maker and tested on its own:

* **Indexing.** A kept sample's global index is `slot * n + rank`: the arrival slot of its group times the group size
  plus its rank inside the group, so upstream's per-prompt reshape (`rewards.reshape(-1, n)`) sees contiguous groups
  whatever order the groups finished in.
* **Waves.** Samples arrive group by group; they are cut into micro-batches of `micro_batch_size` consecutive samples,
  exactly as upstream's `split_rollout_samples` cuts the whole batch, so every micro-batch (and its padding) is the one
  the non-streamed path would build. A wave is released once at least `min_micro_batches` complete micro-batches wait
  (upstream's `RayActorGroup.async_run_method_batch` needs at least one per data-parallel actor), and never so early
  that the micro-batches still expected would form a final wave smaller than that.
* **Token chunks.** A still-decoding candidate may be scored chunk by chunk once it is certain to be kept: in any
  group with `num_candidates == num_keep` (nothing is dropped), and in a dual-end group once fewer than L candidates
  can still end above it by (length, index): the other running ones, plus the finishes that order after its current
  progress (`chunk_eligible`; siblings need not decode in lockstep). Chunks are spans of the full sequence; the first one carries
  the prompt plus `chunk_tokens` response tokens, later ones `chunk_tokens` each, and the last one the remainder.
"""

from __future__ import annotations

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
class Wave:
    """Samples [start, end) of the arrival order, sent to scoring together; micro-batches [first_mb, end_mb)."""

    start: int
    end: int
    first_micro_batch: int
    end_micro_batch: int

    @property
    def num_micro_batches(self) -> int:
        return self.end_micro_batch - self.first_micro_batch


class WaveScheduler:
    """Cuts an arriving stream of samples into waves of whole micro-batches (see the module docstring).

    `expected_samples` is the step's sample count (rollout batch size x n); the stream may end early (`flush`), e.g.
    when the dataloader is exhausted, and the last wave then holds what is left.
    """

    def __init__(self, expected_samples: int, micro_batch_size: int, min_micro_batches: int):
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size={micro_batch_size} must be >= 1 (--rollout.micro_batch_size)")
        if min_micro_batches < 1:
            raise ValueError(f"min_micro_batches={min_micro_batches} must be >= 1 (data-parallel actors per group)")
        if expected_samples < 1:
            raise ValueError(f"expected_samples={expected_samples} must be >= 1 (rollout batch size x n)")
        expected_mb = -(-expected_samples // micro_batch_size)
        if expected_mb < min_micro_batches:
            raise ValueError(
                f"{expected_samples} samples make {expected_mb} micro-batches of {micro_batch_size}, fewer than the "
                f"{min_micro_batches} data-parallel actors; raise --rollout.batch_size or lower "
                "--rollout.micro_batch_size (upstream needs at least one micro-batch per actor)"
            )
        self.expected_samples = expected_samples
        self.micro_batch_size = micro_batch_size
        self.min_micro_batches = min_micro_batches
        self.expected_micro_batches = expected_mb
        self.arrived = 0
        self.dispatched_samples = 0
        self.dispatched_micro_batches = 0
        self.waves: list[Wave] = []

    def add(self, count: int) -> list[Wave]:
        """`count` more samples arrived; returns the waves to dispatch now (zero or one)."""
        if count < 0:
            raise ValueError(f"count={count} must be >= 0")
        if self.arrived + count > self.expected_samples:
            raise ValueError(
                f"{self.arrived + count} samples arrived but the step expects {self.expected_samples}; the samples "
                "generator returns at most rollout batch size x n"
            )
        self.arrived += count
        complete_mb = self.arrived // self.micro_batch_size
        if self.arrived == self.expected_samples:
            return self.flush()
        ready = complete_mb - self.dispatched_micro_batches
        left_after = self.expected_micro_batches - complete_mb
        if ready >= self.min_micro_batches and (left_after == 0 or left_after >= self.min_micro_batches):
            return [self._cut(complete_mb, complete_mb * self.micro_batch_size)]
        return []

    def flush(self) -> list[Wave]:
        """The stream ended: everything not yet dispatched, partial last micro-batch included, as one final wave."""
        if self.arrived == self.dispatched_samples:
            return []
        end_mb = -(-self.arrived // self.micro_batch_size)
        return [self._cut(end_mb, self.arrived)]

    def _cut(self, end_mb: int, end_sample: int) -> Wave:
        wave = Wave(self.dispatched_samples, end_sample, self.dispatched_micro_batches, end_mb)
        self.dispatched_samples, self.dispatched_micro_batches = end_sample, end_mb
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
