"""Step 5 of the pipeline: score kept samples while vLLM keeps generating (spec 3(g), sample level).

`DartsExperienceMaker` extends upstream's `RemoteExperienceMaker` with a dispatch/collect split around upstream's own
`make_experience`, which only orchestrates Ray calls (reward, actor, critic and reference forwards, then KL):

    samples generator ── a group's early part (its K short members) ──> dispatch_part
                     ── the whole group (n, rank order) ───────────────> dispatch_group   (index = slot * n + rank)
                                                           │ StreamLayout: upstream's micro-batches, each scored once
                                                           │ all its samples are in; >= DP actors per wave
                                                           └─> worker thread: upstream make_experience(wave)
    trainer ── make_experience_batch(rollout_samples) ──> collect: the micro-batch results in index order
                                                           └─> upstream compute_advantages_and_returns(all)

A group takes its slot when its first part arrives, so its short end has its final indices before its long end exists;
micro-batches are upstream's `split_rollout_samples` cut of the final batch in index order (groups contiguous, each in
release order), and a wave carries whichever of them are complete, in any order. Forwards are per micro-batch, so the
streamed Experiences are bit-equal to upstream's over the same sample order (fp32, CPU). Collection puts the results
back in index order before upstream's advantage code, as upstream's own path hands them (index == list position).

Dynamic filtering judges whole groups: a group dropped after its short end was scored (`drop_group`) leaves its slot
to the next group, and the forward time of micro-batches that are no longer part of the batch is reported as wasted.

Token level (`--darts.stream_tokens`, trainer/token_stream.py): long kept candidates were scored chunk by chunk while
they decoded; `dispatch_part` / `dispatch_group` finish their caches, and the wave's forwards for the policy, reference
and critic groups go to `darts_forward`, which takes those rows from the chunk scores and runs upstream's forward on the
others (the one upstream helper touched is `_dispatch_forward`). Equal to the non-streamed Experiences within fp32
rounding. Without an open stream (streaming off, evaluation, a generator that was not attached) `make_experience_batch`
is upstream's. Metrics (`pop_metrics`, docs/metrics.md): `timing/darts_stream_wait`, `timing/darts_overlap_hidden_ratio`,
`timing/darts_stream_wasted`, `darts/stream_waves`, `darts/stream_early_samples`, `darts/stream_late_samples`.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor

import ray

from openrlhf_darts import upstream
from openrlhf_darts.config import DartsConfig
from openrlhf_darts.core.streaming import StreamLayout, Wave
from openrlhf_darts.trainer.token_stream import METRIC_KEYS, TokenStreamer, scorer_groups

logger = logging.getLogger(__name__)


class _Stream:
    """One step's open stream: where every sample sits (`StreamLayout`) and the futures of the waves."""

    def __init__(self, layout: StreamLayout):
        self.layout = layout
        self.samples: dict[int, object] = {}  # handle -> Experience (batch 1)
        self.handles: dict[object, list[int]] = {}  # group key -> its handles in rank order
        self.futures: list[tuple[Wave, Future]] = []
        self.closed = False
        self.order: list | None = None  # after close: the Experiences in index order
        self.generation_end = 0.0  # perf_counter when the generator closed the stream
        self.precomputed: dict[int, dict[str, object]] = {}  # handle -> group name -> finish_chunks ref
        self.early_samples = 0  # samples handed on in a part before their group ended
        self.late_samples = 0  # samples first scored by the last arrival's waves or at the close: after generation
        self.last_arrival_samples = 0  # samples in the waves the latest dispatch / drop released
        self.anonymous = 0  # groups dispatched without a group id (tests, callers outside the generator)

    def register(self, experiences: list) -> list[int]:
        handles = list(range(len(self.samples), len(self.samples) + len(experiences)))
        self.samples.update(zip(handles, experiences))
        return handles


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
        self._stream: _Stream | None = None
        self._metrics: dict[str, float] = {}

    # ---- dispatch side (called by the samples generator while vLLM generates) -----------------------------------
    def min_micro_batches(self) -> int:
        """Micro-batches each wave needs: the largest data-parallel size among the model groups it calls."""
        groups = [self.actor_model_group, self.critic_model_group, self.initial_model_group, self.reward_model_group]
        return max(upstream.effective_actors(g) for g in groups if g is not None)

    def open_stream(self) -> None:
        """Start a training step's stream: up to rollout batch size groups of n samples."""
        if self._stream is not None and not self._stream.closed:
            raise RuntimeError("a stream is already open; close it (close_stream) before opening the next step's")
        rollout = self.args.rollout
        if self.token_streamer is not None:
            self._chunk_busy_s = self.token_streamer.cache_stats()["busy_s"]  # baseline for timing/darts_chunk_forward
        self._stream = _Stream(
            StreamLayout(
                rollout.n_samples_per_prompt, rollout.batch_size, rollout.micro_batch_size, self.min_micro_batches()
            )
        )

    def add_token_chunks(self, chunks: list[dict]) -> None:
        """Token chunks drained from the engines (`pop_stream_outbox`): sent on to the scorers' KV caches."""
        self._require_open()
        if not chunks:
            return
        if self.token_streamer is None:
            raise RuntimeError("token chunks arrived but --darts.stream_tokens is off for this experience maker")
        self.token_streamer.add(chunks)

    def dispatch_part(self, experiences: list, group_id: int, stream_keys: list | None = None) -> None:
        """The first kept samples of a group that has not ended (its K short members, spec 3(g)), in rank order:
        they take the group's slot and its first ranks, and every micro-batch they complete is scored.

        `dispatch_group` later brings the whole group, these samples first; `drop_group` takes them back out."""
        stream = self._require_open()
        n = self.args.rollout.n_samples_per_prompt
        if group_id is None or group_id in stream.handles:
            raise ValueError(f"group_id={group_id!r}: a part needs a group id, and a group releases one early part")
        if not 0 < len(experiences) < n:
            raise ValueError(f"an early part of {len(experiences)} samples; a part holds 1 to n - 1 = {n - 1}")
        keys = self._keys(stream_keys, len(experiences))
        handles = stream.register(experiences)
        stream.handles[group_id] = handles
        stream.early_samples += len(handles)
        self._finish_streamed(stream, handles, keys)
        self._submit_all(stream, stream.layout.add(group_id, handles))

    def dispatch_group(self, experiences: list, group_id: int | None = None, stream_keys: list | None = None) -> None:
        """One accepted group's n Experiences in rank order (an early part's samples first, the same objects):
        the rest take their indices and every micro-batch they complete is scored.

        With token streaming, `stream_keys[r]` is the engine's key of rank r (`darts_stream_key`, None if absent):
        the group's other streamed candidates are released and the kept ones' chunk scores are finished."""
        stream = self._require_open()
        n = self.args.rollout.n_samples_per_prompt
        if len(experiences) != n:
            raise ValueError(
                f"a group of {len(experiences)} samples arrived; streaming needs exactly n={n} per prompt"
            )
        if group_id is None:
            group, stream.anonymous = ("anonymous", stream.anonymous), stream.anonymous + 1
        else:
            group = group_id
        early = stream.handles.get(group, [])
        if any(stream.samples[h] is not e for h, e in zip(early, experiences)):
            raise ValueError(f"group {group_id}: the first {len(early)} samples are not the part dispatched before")
        keys = self._keys(stream_keys, n)
        if self.token_streamer is not None and group_id is not None:
            self.token_streamer.release_group(group_id, keep={k for k in keys if k is not None})
        handles = stream.register(experiences[len(early) :])
        stream.handles[group] = early + handles
        self._finish_streamed(stream, handles, keys[len(early) :])
        self._submit_all(stream, stream.layout.add(group, handles))

    def drop_group(self, group_id: int) -> None:
        """A group that will not be scored (dynamic filtering): free its token-streaming caches, and if its short end
        was already dispatched, give its slot back (the forwards already run on it are wasted)."""
        if self.token_streamer is not None:
            self.token_streamer.release_group(group_id)
        stream = self._stream
        if stream is not None and not stream.closed and group_id in stream.handles:
            for handle in stream.handles.pop(group_id):
                stream.precomputed.pop(handle, None)
            self._submit_all(stream, stream.layout.drop(group_id))

    def close_stream(self) -> list:
        """Generation ended: score what is left as the last wave; returns the step's samples in index order."""
        stream = self._require_open()
        stream.late_samples = stream.last_arrival_samples
        for wave in stream.layout.close():
            stream.late_samples += wave.num_samples
            self._submit(stream, wave)
        stream.closed = True
        stream.generation_end = time.perf_counter()
        stream.order = [stream.samples[h] for h in stream.layout.order()]
        return list(stream.order)

    def _require_open(self) -> _Stream:
        if self._stream is None or self._stream.closed:
            raise RuntimeError("no open stream; call open_stream first")
        return self._stream

    def _keys(self, stream_keys, count: int) -> list:
        keys = list(stream_keys) if stream_keys is not None else [None] * count
        if len(keys) != count:
            raise ValueError(f"{len(keys)} stream keys for {count} samples")
        return keys

    def _finish_streamed(self, stream: _Stream, handles: list[int], keys: list) -> None:
        """Token streaming: finish the chunk caches of kept samples that were streamed."""
        if self.token_streamer is None:
            return
        for handle, key in zip(handles, keys):
            experience = stream.samples[handle]
            refs = self.token_streamer.finish(key, experience.sequences, experience.action_mask)
            if refs is not None:
                stream.precomputed[handle] = refs

    def _submit_all(self, stream: _Stream, waves: list[Wave]) -> None:
        stream.last_arrival_samples = sum(wave.num_samples for wave in waves)
        for wave in waves:
            self._submit(stream, wave)

    def _submit(self, stream: _Stream, wave: Wave) -> None:
        samples_list = []
        for mb in wave.micro_batches:
            experiences = [stream.samples[h] for h in mb.samples]
            for offset, experience in enumerate(experiences):
                experience.index = [mb.start + offset]
            samples_list.append(upstream.Experience.concat_experiences(experiences, self.tokenizer.pad_token_id))
        # A short final wave (few samples left) repeats its last micro-batch up to the actor count; the repeats are
        # the same object, so they get the same (deterministic) results and are dropped on collect.
        padding = max(0, self.min_micro_batches() - len(samples_list))
        # Token streaming: per model group, per micro-batch, per row the finish_chunks ref or None. Every streamed
        # sample has a ref for every scorer group, so a wave with one streamed sample routes all of them.
        rows = {}
        if any(h in stream.precomputed for mb in wave.micro_batches for h in mb.samples):
            for name in self.token_streamer.groups:
                rows[name] = [
                    [stream.precomputed.get(h, {}).get(name) for h in mb.samples] for mb in wave.micro_batches
                ]
                rows[name] += rows[name][-1:] * padding
        future = self._pool.submit(self._run_wave, samples_list + samples_list[-1:] * padding, len(samples_list), rows)
        stream.futures.append((wave, future))

    def _run_wave(self, samples_list: list, keep: int, rows: dict) -> tuple[list, float]:
        start = time.perf_counter()
        self._wave_rows = {
            id(self.token_streamer.groups[name]): [[None if r is None else ray.get(r) for r in mb] for mb in per_mb]
            for name, per_mb in rows.items()
        }
        try:
            experiences = self.make_experience(samples_list)[:keep]  # upstream's forwards + KL, unchanged
        finally:
            self._wave_rows = {}
        return experiences, time.perf_counter() - start

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
        if len(rollout_samples) != len(stream.order) or any(a is not b for a, b in zip(rollout_samples, stream.order)):
            raise RuntimeError(
                f"the trainer passed {len(rollout_samples)} samples that are not the {len(stream.order)} streamed "
                "ones in index order; streamed experiences can only be collected for the samples they were made from"
            )
        return self.collect()

    def collect(self) -> list:
        """Wait for every wave, put the micro-batch results in index order and run upstream's advantage computation on
        the batch."""
        stream = self._stream
        if stream is None or not stream.closed:
            raise RuntimeError("collect needs a closed stream (open_stream, dispatch_group..., close_stream)")
        self._stream = None
        wait_start = time.perf_counter()
        waves = [(wave, *future.result()) for wave, future in stream.futures]
        wait = time.perf_counter() - wait_start
        results = {mb.samples: e for wave, experiences, _ in waves for mb, e in zip(wave.micro_batches, experiences)}
        experiences = []
        for mb in stream.layout.micro_batches():
            experience = results[mb.samples]
            experience.index = list(range(mb.start, mb.start + len(mb.samples)))  # moved if a dropped slot closed up
            experiences.append(experience)
        final = {mb.samples for mb in stream.layout.micro_batches()}
        forward = sum(seconds for _, _, seconds in waves)
        # Forward time of micro-batches scored and then left out (a dropped group's), by their share of their wave.
        wasted = sum(
            seconds * sum(mb.samples not in final for mb in wave.micro_batches) / wave.num_micro_batches
            for wave, _, seconds in waves
        )
        self._metrics = {
            "timing/darts_stream_wait": wait,
            "timing/darts_overlap_hidden_ratio": max(0.0, 1.0 - wait / forward) if forward > 0 else 0.0,
            "timing/darts_stream_wasted": wasted,
            "darts/stream_waves": float(len(waves)),
            "darts/stream_early_samples": float(stream.early_samples),
            "darts/stream_late_samples": float(stream.late_samples),
        }
        if self.token_streamer is not None:
            self._metrics.update(self._finish_token_stream())
        indices = [i for e in experiences for i in e.index]
        if indices != list(range(len(stream.order))):
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
