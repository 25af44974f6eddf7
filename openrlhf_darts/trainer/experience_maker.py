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

Token level (`--darts.stream_tokens`, trainer/token_stream.py): long kept candidates were scored chunk by chunk while
they decoded; `dispatch_group` finishes their caches, and the wave's forwards for the policy, reference and critic
groups go to `darts_forward`, which takes those rows from the chunk scores and runs upstream's forward on the others
(the one upstream helper touched is `_dispatch_forward`). Equal to the non-streamed Experiences within fp32 rounding.
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

import ray

from openrlhf_darts import upstream
from openrlhf_darts.config import DartsConfig
from openrlhf_darts.core.streaming import Wave, WaveScheduler, sample_index
from openrlhf_darts.trainer.token_stream import METRIC_KEYS, TokenStreamer, scorer_groups

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
        self.precomputed: dict[int, dict[str, object]] = {}  # global index -> group name -> finish_chunks ref


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
        self.token_streamer: TokenStreamer | None = None
        if config.stream_tokens:
            groups = scorer_groups(self.actor_model_group, self.initial_model_group, self.critic_model_group)
            self.token_streamer = TokenStreamer(groups, config.max_live_caches)
        self._chunk_busy_s = 0.0  # scorers' cumulative chunk-forward seconds when the stream opened
        self._wave_rows: dict[int, list] = {}  # id(model group) -> per micro-batch, per row: scores or None
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
        if self.token_streamer is not None:
            self._chunk_busy_s = self.token_streamer.cache_stats()["busy_s"]  # baseline for timing/darts_chunk_forward
        self._stream = _Stream(
            WaveScheduler(
                rollout.batch_size * rollout.n_samples_per_prompt, rollout.micro_batch_size, self.min_micro_batches()
            )
        )

    def add_token_chunks(self, chunks: list[dict]) -> None:
        """Token chunks drained from the engines (`pop_token_chunks`): sent on to the scorers' KV caches."""
        self._require_open()
        if not chunks:
            return
        if self.token_streamer is None:
            raise RuntimeError("token chunks arrived but --darts.stream_tokens is off for this experience maker")
        self.token_streamer.add(chunks)

    def drop_group(self, group_id: int) -> None:
        """A group that will not be scored (dynamic filtering): free its token-streaming caches."""
        if self.token_streamer is not None:
            self.token_streamer.release_group(group_id)

    def dispatch_group(self, experiences: list, group_id: int | None = None, stream_keys: list | None = None) -> None:
        """One accepted group's n Experiences (rank order): assign global indices and release any ready wave.

        With token streaming, `stream_keys[r]` is the engine's key of rank r (`darts_stream_key`, None if absent):
        the group's other streamed candidates are released and the kept ones' chunk scores are finished."""
        stream = self._require_open()
        n = self.args.rollout.n_samples_per_prompt
        if len(experiences) != n:
            raise ValueError(
                f"a group of {len(experiences)} samples arrived; streaming needs exactly n={n} per prompt"
            )
        slot = stream.groups
        for rank, experience in enumerate(experiences):
            experience.index = [sample_index(slot, rank, n)]
        if self.token_streamer is not None and group_id is not None:
            keys = list(stream_keys) if stream_keys is not None else [None] * n
            if len(keys) != n:
                raise ValueError(f"{len(keys)} stream keys for a group of n={n}")
            self.token_streamer.release_group(group_id, keep={k for k in keys if k is not None})
            for key, experience in zip(keys, experiences):
                refs = self.token_streamer.finish(key, experience.sequences, experience.action_mask)
                if refs is not None:
                    stream.precomputed[experience.index[0]] = refs
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
        # Token streaming: per model group, per micro-batch, per row the finish_chunks ref or None. Every streamed
        # sample has a ref for every scorer group, so a wave with one streamed sample routes all of them.
        rows = {}
        indices = list(range(wave.start, wave.end))
        if any(i in stream.precomputed for i in indices):
            per_mb = [indices[i : i + micro] for i in range(0, len(indices), micro)]
            for name in self.token_streamer.groups:
                rows[name] = [[stream.precomputed.get(i, {}).get(name) for i in mb] for mb in per_mb]
                rows[name] += rows[name][-1:] * padding
        stream.futures.append(
            (
                wave,
                self._pool.submit(
                    self._run_wave, stream, samples_list + samples_list[-1:] * padding, len(samples_list), rows
                ),
            )
        )

    def _run_wave(self, stream: _Stream, samples_list: list, keep: int, rows: dict) -> list:
        start = time.perf_counter()
        self._wave_rows = {
            id(self.token_streamer.groups[name]): [[None if r is None else ray.get(r) for r in mb] for mb in per_mb]
            for name, per_mb in rows.items()
        }
        try:
            experiences = self.make_experience(samples_list)[:keep]  # upstream's forwards + KL, unchanged
        finally:
            self._wave_rows = {}
        with self._lock:
            stream.wave_seconds.append(time.perf_counter() - start)
        return experiences

    def _dispatch_forward(self, group, sync_condition, **kwargs):
        """Upstream's helper, except that a group with chunk-scored rows in this wave runs `darts_forward`."""
        rows = self._wave_rows.get(id(group))
        if rows is None:
            return super()._dispatch_forward(group, sync_condition, **kwargs)
        if sync_condition:
            raise RuntimeError("token streaming with colocated models: rejected by DartsConfig, cannot happen")
        return group.async_run_method_batch(method_name="darts_forward", darts_precomputed=rows, **kwargs)

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
        if self.token_streamer is not None:
            self._metrics.update(self._finish_token_stream())
        indices = [i for e in experiences for i in e.index]
        if indices != list(range(len(stream.samples))):
            raise RuntimeError(f"streamed experiences came back out of index order: {indices[:16]}...")
        return self.compute_advantages_and_returns(experiences)

    def _finish_token_stream(self) -> dict[str, float]:
        """End of a step: every streamed sample was finished or released; report the token-streaming metrics."""
        streamer = self.token_streamer
        leftover = streamer.live_keys()
        streamer.release_all()
        streamer.drain()
        if leftover:
            raise RuntimeError(f"token-streamed samples neither kept nor dropped by their group: {leftover[:8]}")
        metrics = {METRIC_KEYS[k]: float(v) for k, v in streamer.metrics.items()}
        stats = streamer.cache_stats()
        metrics["darts/stream_token_peak_cache_bytes"] = stats["peak_bytes"]
        metrics["timing/darts_chunk_forward"] = stats["busy_s"] - self._chunk_busy_s  # this step's chunk forwards
        streamer.reset_metrics()
        return metrics

    def pop_metrics(self) -> dict[str, float]:
        metrics, self._metrics = self._metrics, {}
        return metrics

    def abort_stream(self) -> None:
        """Generation failed: forget the open stream (waves already running finish in the background, unused) and
        free the token-streaming caches."""
        self._stream = None
        if self.token_streamer is not None:
            self.token_streamer.release_all()
            self.token_streamer.reset_metrics()
