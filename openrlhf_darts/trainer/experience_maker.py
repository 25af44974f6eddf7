"""Step 5 of the pipeline: score finished groups while vLLM keeps generating (spec 3(g), sample level).

`DartsExperienceMaker` extends upstream's `RemoteExperienceMaker` with a dispatch/collect split around upstream's own
`make_experience`, which only orchestrates Ray calls (reward, actor, critic and reference forwards, then KL):

    samples generator ── group of n kept Experiences ──> dispatch_group   (index = slot * n + rank)
                                                           │ WaveScheduler: whole micro-batches, >= DP actors per wave
                                                           └─> worker thread: upstream make_experience(wave)
    trainer ── make_experience_batch(rollout_samples) ──> collect: join the waves in index order
                                                           └─> upstream compute_advantages_and_returns(all)

Micro-batches are cut from the arrival order exactly as upstream's `split_rollout_samples` cuts the whole batch, and
each forward is per micro-batch, so the streamed Experiences are bit-equal to the non-streamed ones (fp32, CPU).
Without an open stream (streaming off, evaluation, a generator that was not attached) `make_experience_batch` is
upstream's. Metrics (`pop_metrics`): `timing/darts_stream_wait` (seconds `collect` waited for outstanding waves after
generation ended), `timing/darts_overlap_hidden_ratio` (1 - wait / total wave forward time: the share of forward time
hidden behind generation), `darts/stream_waves`.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from openrlhf_darts import upstream
from openrlhf_darts.config import DartsConfig
from openrlhf_darts.core.streaming import Wave, WaveScheduler, sample_index

logger = logging.getLogger(__name__)


class _Stream:
    """One step's open stream: the samples in arrival order and the futures of their waves."""

    def __init__(self, scheduler: WaveScheduler):
        self.scheduler = scheduler
        self.samples: list = []  # Experience (batch 1), arrival order == global index order
        self.futures: list[tuple[Wave, Future]] = []
        self.wave_seconds: list[float] = []
        self.closed = False
        self.groups = 0  # groups arrived so far = the next group's slot
        self.generation_end = 0.0  # perf_counter when the generator closed the stream


class DartsExperienceMaker(upstream.RemoteExperienceMaker):
    def __init__(self, *args, config: DartsConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.config = config
        if self.args.train.dynamic_batch_enable:
            raise ValueError(
                "--darts.stream with --train.dynamic_batch_enable: token-balanced micro-batches need the whole batch "
                "before any forward, so nothing could overlap. Drop one of them"
            )
        if self.args.train.colocate_all:
            raise ValueError(
                "--darts.stream with --train.colocate_all: forwards are serialized with generation; drop one of them"
            )
        if config.stream_tokens:
            # Loud rather than a flag that silently does nothing (docs/streaming.md, "Not wired yet").
            raise ValueError(
                "--darts.stream_tokens: the engine-side emission of partial tokens to the scorers is not implemented "
                "yet (the scorer chunk methods, the eligibility rule and the chunk spans are); drop "
                "--darts.stream_tokens and keep --darts.stream for sample-level overlap"
            )
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="darts-stream")
        self._lock = threading.Lock()
        self._stream: _Stream | None = None
        self._metrics: dict[str, float] = {}

    # ---- dispatch side (called by the samples generator while vLLM generates) -----------------------------------
    def min_micro_batches(self) -> int:
        """Micro-batches each wave needs: the largest data-parallel size among the model groups it calls."""
        groups = [self.actor_model_group, self.critic_model_group, self.initial_model_group, self.reward_model_group]
        return max(upstream.effective_actors(g) for g in groups if g is not None)

    def open_stream(self) -> None:
        """Start a training step's stream: rollout batch size x n samples are expected."""
        if self._stream is not None and not self._stream.closed:
            raise RuntimeError("a stream is already open; close it (close_stream) before opening the next step's")
        rollout = self.args.rollout
        self._stream = _Stream(
            WaveScheduler(
                rollout.batch_size * rollout.n_samples_per_prompt, rollout.micro_batch_size, self.min_micro_batches()
            )
        )

    def dispatch_group(self, experiences: list) -> None:
        """One accepted group's n Experiences (rank order): assign global indices and release any ready wave."""
        stream = self._require_open()
        n = self.args.rollout.n_samples_per_prompt
        if len(experiences) != n:
            raise ValueError(
                f"a group of {len(experiences)} samples arrived; streaming needs exactly n={n} per prompt"
            )
        slot = stream.groups
        for rank, experience in enumerate(experiences):
            experience.index = [sample_index(slot, rank, n)]
        stream.groups += 1
        stream.samples.extend(experiences)
        for wave in stream.scheduler.add(len(experiences)):
            self._submit(stream, wave)

    def close_stream(self) -> None:
        """Generation ended: dispatch the remainder as the last wave."""
        stream = self._require_open()
        for wave in stream.scheduler.flush():
            self._submit(stream, wave)
        stream.closed = True
        stream.generation_end = time.perf_counter()

    def _require_open(self) -> _Stream:
        if self._stream is None or self._stream.closed:
            raise RuntimeError("no open stream; call open_stream first")
        return self._stream

    def _submit(self, stream: _Stream, wave: Wave) -> None:
        micro = self.args.rollout.micro_batch_size
        samples = stream.samples[wave.start : wave.end]
        samples_list = [
            upstream.Experience.concat_experiences(samples[i : i + micro], self.tokenizer.pad_token_id)
            for i in range(0, len(samples), micro)
        ]
        # A short final wave (the dataloader ran out) repeats its last micro-batch up to the actor count; the repeats
        # are the same object, so they get the same (deterministic) results and are dropped on collect.
        padding = max(0, self.min_micro_batches() - len(samples_list))
        stream.futures.append(
            (
                wave,
                self._pool.submit(
                    self._run_wave, stream, samples_list + samples_list[-1:] * padding, len(samples_list)
                ),
            )
        )

    def _run_wave(self, stream: _Stream, samples_list: list, keep: int) -> list:
        start = time.perf_counter()
        experiences = self.make_experience(samples_list)[:keep]  # upstream's forwards + KL, unchanged
        with self._lock:
            stream.wave_seconds.append(time.perf_counter() - start)
        return experiences

    # ---- collect side (the trainer's make_experience_batch) ------------------------------------------------------
    def make_experience_batch(self, rollout_samples):
        stream = self._stream
        if stream is None:
            return super().make_experience_batch(rollout_samples)
        if not stream.closed:
            raise RuntimeError("make_experience_batch called while the stream is still open (close_stream first)")
        if len(rollout_samples) != len(stream.samples) or any(
            a is not b for a, b in zip(rollout_samples, stream.samples)
        ):
            raise RuntimeError(
                f"the trainer passed {len(rollout_samples)} samples that are not the {len(stream.samples)} streamed "
                "ones; streamed experiences can only be collected for the samples they were made from"
            )
        return self.collect()

    def collect(self) -> list:
        """Wait for every wave, join them in index order and run upstream's advantage computation on the batch."""
        stream = self._stream
        if stream is None or not stream.closed:
            raise RuntimeError("collect needs a closed stream (open_stream, dispatch_group..., close_stream)")
        self._stream = None
        wait_start = time.perf_counter()
        experiences = [e for _, future in stream.futures for e in future.result()]
        wait = time.perf_counter() - wait_start
        forward = sum(stream.wave_seconds)
        self._metrics = {
            "timing/darts_stream_wait": wait,
            "timing/darts_overlap_hidden_ratio": max(0.0, 1.0 - wait / forward) if forward > 0 else 0.0,
            "darts/stream_waves": float(len(stream.futures)),
        }
        indices = [i for e in experiences for i in e.index]
        if indices != list(range(len(stream.samples))):
            raise RuntimeError(f"streamed experiences came back out of index order: {indices[:16]}...")
        return self.compute_advantages_and_returns(experiences)

    def pop_metrics(self) -> dict[str, float]:
        metrics, self._metrics = self._metrics, {}
        return metrics

    def abort_stream(self) -> None:
        """Generation failed: forget the open stream (waves already running finish in the background, unused)."""
        self._stream = None
