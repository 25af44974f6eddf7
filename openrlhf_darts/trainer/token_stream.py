"""Token-level streaming on the trainer side (`--darts.stream_tokens`, spec 3(g)): engine chunks -> scorer KV caches.

    engines ── pop_token_chunks ──> TokenStreamer.add ── forward_chunk(key, tokens) ──> policy / reference / critic
                                                                                         (one actor of each group
                                                                                          holds the sample's cache)
    kept sample arrives ──> TokenStreamer.finish(key, sequence, action_mask)
                              ├─ remainder sequence[sent:] ── forward_chunk
                              └─ finish_chunks ──> (1, A) scores per group, used instead of that row's forward
    group dropped / candidate not kept ──> TokenStreamer.release_group ── release_chunks (tokens count as wasted)

Chunks of one sample go to the same actor of each group, and Ray runs one caller's calls on an actor in order, so a
sample's chunks, its remainder and its finish arrive in sequence. A new sample is streamed only while its actors hold
fewer than `max_live` caches; otherwise it is scored by the ordinary forward (`darts/stream_token_skipped`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import ray

from openrlhf_darts import upstream

CHUNK_METHODS = ("forward_chunk", "finish_chunks", "release_chunks", "chunk_cache_stats")
# TokenStreamer.metrics counter -> the metric key it is logged under (docs/metrics.md).
METRIC_KEYS = {
    "samples": "darts/stream_token_samples",
    "chunks": "darts/stream_token_chunks",
    "tokens": "darts/stream_token_tokens",
    "finished": "darts/stream_token_finished",
    "wasted_tokens": "darts/stream_token_wasted_tokens",
    "released": "darts/stream_token_released",
    "skipped": "darts/stream_token_skipped",
    "fallback": "darts/stream_token_fallback",
}


@dataclass
class _Sample:
    group_id: int
    actors: dict[str, object] | None  # group name -> actor handle holding the cache; None: skipped (caches full)
    tokens: list[int] = field(default_factory=list)  # sequence tokens sent so far (checked against the final sample)


def scorer_groups(actor_model_group, initial_model_group, critic_model_group) -> dict[str, object]:
    """The model groups that score chunks, by name; each must run the chunk methods (`ChunkScoringMixin`)."""
    groups = {"policy": actor_model_group, "reference": initial_model_group, "critic": critic_model_group}
    groups = {name: group for name, group in groups.items() if group is not None}
    for name, group in groups.items():
        missing = [m for m in CHUNK_METHODS if not hasattr(upstream.actor_class(group), m)]
        if missing:
            raise ValueError(
                f"--darts.stream_tokens: the {name} actor class {upstream.actor_class(group).__name__} lacks {missing}; launch through "
                "python -m openrlhf_darts.cli.train_ppo_ray (GPU chunk actors) or the CPU backend, or drop "
                "--darts.stream_tokens"
            )
        if group.duplicate_actors != 1:
            raise ValueError(
                f"--darts.stream_tokens: the {name} group runs {group.duplicate_actors} copies per sample (ring "
                "attention / tensor parallel); chunk caches are per actor. Drop --darts.stream_tokens or use 1"
            )
    return groups


class TokenStreamer:
    """Routes one step's token chunks to the scorers and turns finished samples into precomputed scores."""

    def __init__(self, groups: dict[str, object], max_live: int):
        if not groups:
            raise ValueError("--darts.stream_tokens needs at least one of the policy / reference / critic groups")
        if max_live < 1:
            raise ValueError(f"max_live={max_live} must be >= 1 (--darts.max_live_caches)")
        self.groups = groups
        self.max_live = max_live
        self._samples: dict[str, _Sample] = {}
        self._live = {name: {id(a): 0 for a in upstream.actor_handles(g)} for name, g in groups.items()}
        self._pending: list = []  # refs of chunk / release calls, checked for errors at the end of the step
        self.reset_metrics()

    def reset_metrics(self) -> None:
        self.metrics = dict.fromkeys(METRIC_KEYS, 0)

    # ---- while the engines decode ----------------------------------------------------------------------------
    def add(self, chunks: list[dict]) -> None:
        """Chunks from `DartsRolloutActor.pop_token_chunks`, in emission order per sample."""
        for chunk in chunks:
            key, start, tokens = chunk["key"], chunk["start"], chunk["tokens"]
            sample = self._samples.get(key)
            if sample is None:
                if start != 0:
                    raise RuntimeError(f"token chunk of {key!r} starts at {start} but none of its chunks arrived")
                sample = self._samples[key] = _Sample(chunk["group_id"], self._place())
                self.metrics["samples" if sample.actors else "skipped"] += 1
            if start != len(sample.tokens):
                raise RuntimeError(f"token chunk of {key!r} starts at {start}, expected {len(sample.tokens)}")
            sample.tokens.extend(tokens)
            if sample.actors:
                self._send(key, sample.actors, tokens)
                self.metrics["chunks"] += 1
                self.metrics["tokens"] += len(tokens)

    def _place(self) -> dict[str, object] | None:
        """The least-loaded actor of every group, or None when one group's actors are all at `max_live`."""
        chosen = {}
        for name, group in self.groups.items():
            actor = min(upstream.actor_handles(group), key=lambda a: self._live[name][id(a)])
            if self._live[name][id(actor)] >= self.max_live:
                return None
            chosen[name] = actor
        for name, actor in chosen.items():
            self._live[name][id(actor)] += 1
        return chosen

    def _send(self, key: str, actors: dict, tokens: list[int]) -> None:
        self._pending += [actor.forward_chunk.remote(key, tokens) for actor in actors.values()]

    # ---- when groups resolve --------------------------------------------------------------------------------
    def release_group(self, group_id: int, keep: set[str] = frozenset()) -> None:
        """Free the caches of `group_id`'s streamed candidates not in `keep` (dropped by selection or filtering)."""
        for key in [k for k, s in self._samples.items() if s.group_id == group_id and k not in keep]:
            self._release(key, wasted=True)

    def finish(self, key: str | None, sequences, action_mask) -> dict[str, ray.ObjectRef] | None:
        """Refs of the kept sample's `(1, A)` scores per group, or None if it was not streamed (or cannot be).

        `sequences` (1, T) and `action_mask` (1, T-1) are the sample's own Experience tensors; the tokens not yet sent
        go out as the last chunk. A sample cut by `max_len` after its chunks went out is released and falls back.
        """
        sample = self._samples.get(key) if key is not None else None
        if sample is None:
            return None
        if sample.actors is None:
            del self._samples[key]
            return None
        sequence = sequences.reshape(-1).tolist()
        sent = len(sample.tokens)
        if sent > len(sequence) or sequence[:sent] != sample.tokens:
            if sent <= len(sequence):
                raise RuntimeError(
                    f"sample {key!r}: the streamed tokens differ from the sample's sequence; token streaming "
                    "supports single-turn executors only (drop --darts.stream_tokens for agents)"
                )
            self._release(key, wasted=True)  # cut by --max_len after streaming: score it the ordinary way
            self.metrics["fallback"] += 1
            return None
        if len(sequence) > sent:
            self._send(key, sample.actors, sequence[sent:])
            self.metrics["tokens"] += len(sequence) - sent
        refs = {name: actor.finish_chunks.remote(key, action_mask) for name, actor in sample.actors.items()}
        self._forget(key)
        self.metrics["finished"] += 1
        return refs

    def _release(self, key: str, wasted: bool) -> None:
        sample = self._samples[key]
        if sample.actors:
            self._pending += [actor.release_chunks.remote([key]) for actor in sample.actors.values()]
            self.metrics["released"] += 1
            if wasted:
                self.metrics["wasted_tokens"] += len(sample.tokens)
        self._forget(key)

    def _forget(self, key: str) -> None:
        sample = self._samples.pop(key)
        for name, actor in (sample.actors or {}).items():
            self._live[name][id(actor)] -= 1

    # ---- end of the step ----------------------------------------------------------------------------------------
    def live_keys(self) -> list[str]:
        return sorted(self._samples)

    def release_all(self) -> None:
        """Free every cache still held (a failed or abandoned step)."""
        for key in list(self._samples):
            self._release(key, wasted=True)

    def drain(self) -> None:
        """Wait for every chunk and release call sent so far; raises the first scorer error."""
        pending, self._pending = self._pending, []
        ray.get(pending)

    def cache_stats(self) -> dict[str, float]:
        """Over the scorers' actors: the largest lifetime-peak KV bytes of one actor, live caches, and the seconds spent
        in chunk forwards (summed, cumulative)."""
        stats = ray.get([a.chunk_cache_stats.remote() for g in self.groups.values() for a in upstream.actor_handles(g)])
        return {
            "peak_bytes": float(max(s["peak_bytes"] for s in stats)),
            "live": float(sum(s["live"] for s in stats)),
            "busy_s": float(sum(s["busy_s"] for s in stats)),
        }
