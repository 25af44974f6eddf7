"""Token-level streaming on the scorer side: score a sequence chunk by chunk against a per-sample KV cache (spec 3(g)).

A long kept candidate's tokens arrive in chunks while it still decodes. Each chunk runs one forward over the new tokens
only, attending to the sample's cached prefix (Hugging Face `DynamicCache`), and returns one value per chunk token:

    log-prob scorers (policy, reference): out[j] = log p(token_j | tokens_<j), from the logits at position j-1
    value scorer (critic):                out[j] = V(position j-1)

so the concatenation of all chunks has length T-1 and equals upstream's full-sequence `log_probs[:, :-1]` /
`values[:, :-1]`, aligned with `action_mask`. **Chunk boundary:** the first token of a chunk is scored from the last
output row of the previous chunk, which the cache keeps; the very first token of a sequence has no predecessor, so the
first chunk yields one value fewer than it has tokens.

A sample's cache lives until `finish` (its last chunk arrived) or `release` (it was aborted or dropped); `len()` counts
live caches and `peak_bytes` records the largest KV footprint, for the memory figure of the benchmark.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

# step(input_ids (1, C), position_ids (1, C), cache) -> rows: logits (1, C, V) or values (1, C)
ChunkStep = Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]
KINDS = ("logprobs", "values")


@dataclass
class _SampleState:
    cache: object  # transformers.DynamicCache holding the K/V of every token fed so far
    num_tokens: int = 0  # tokens fed so far (= the next position id)
    last_row: torch.Tensor | None = None  # (V,) logits or () value at the last fed position
    outputs: list[torch.Tensor] = field(default_factory=list)  # per chunk, (c,) float32


class ChunkCache:
    """Per-sample KV caches of one scorer, at most `max_live` at a time."""

    def __init__(
        self,
        step: ChunkStep,
        kind: str,
        max_live: int = 64,
        device: str | torch.device = "cpu",
        new_cache: Callable[[], object] | None = None,
    ):
        """`new_cache()` makes an empty per-sample cache for `step` (default: Hugging Face's `DynamicCache`)."""
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is not one of {KINDS}")
        if max_live < 1:
            raise ValueError(f"max_live={max_live} must be >= 1 (samples whose KV cache a scorer may hold at once)")
        self._step = step
        self._new_cache = new_cache
        self.kind = kind
        self.max_live = max_live
        self.device = torch.device(device)
        self._states: dict[str, _SampleState] = {}
        self.peak_bytes = 0
        self.peak_live = 0
        self.busy_s = 0.0  # wall time spent in chunk forwards, cumulative

    def __len__(self) -> int:
        return len(self._states)

    def live_ids(self) -> list[str]:
        return sorted(self._states)

    @torch.no_grad()
    def forward_chunk(self, sample_id: str, tokens: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Feed the next `tokens` of `sample_id`; returns their scores, shape (len(tokens),) ((len - 1,) first)."""
        ids = torch.as_tensor(tokens, dtype=torch.long).reshape(1, -1)
        if ids.shape[1] == 0:
            raise ValueError(f"empty chunk for sample {sample_id!r}; send at least one token")
        started = time.perf_counter()
        state = self._states.get(sample_id)
        if state is None:
            if len(self._states) >= self.max_live:
                raise RuntimeError(
                    f"{len(self._states)} live KV caches already (max_live={self.max_live}); finish or release a "
                    f"sample before starting {sample_id!r}"
                )
            if self._new_cache is None:
                from transformers import DynamicCache

                self._new_cache = DynamicCache
            state = self._states[sample_id] = _SampleState(cache=self._new_cache())
        positions = torch.arange(state.num_tokens, state.num_tokens + ids.shape[1]).reshape(1, -1)
        rows = self._step(ids.to(self.device), positions.to(self.device), state.cache)[0].float()  # (C, V) or (C,)
        if self.kind == "logprobs":
            previous = rows[:-1] if state.last_row is None else torch.cat([state.last_row[None], rows[:-1]])
            targets = ids[0, 1:] if state.last_row is None else ids[0]
            out = torch.log_softmax(previous, dim=-1).gather(-1, targets.to(previous.device)[:, None])[:, 0]
        else:
            out = rows[:-1] if state.last_row is None else torch.cat([state.last_row.reshape(1), rows[:-1]])
        state.last_row = rows[-1].clone()
        state.num_tokens += ids.shape[1]
        out = out.to("cpu")
        state.outputs.append(out)
        self.peak_live = max(self.peak_live, len(self._states))
        self.peak_bytes = max(self.peak_bytes, self.cached_bytes())
        self.busy_s += time.perf_counter() - started
        return out

    def finish(self, sample_id: str, action_mask: torch.Tensor) -> torch.Tensor:
        """The sample's action scores, (1, A) like upstream's forward (`[-A:] * action_mask`); frees its cache."""
        state = self._states.pop(sample_id, None)
        if state is None:
            raise KeyError(
                f"no live chunk cache for sample {sample_id!r}; its chunks were never sent or it was released"
            )
        full = torch.cat(state.outputs)  # (T-1,)
        num_actions = action_mask.shape[-1]
        if full.shape[0] < num_actions:
            raise ValueError(
                f"sample {sample_id!r}: {full.shape[0] + 1} tokens were fed but action_mask has {num_actions} actions"
            )
        return full[-num_actions:].reshape(1, -1) * action_mask.reshape(1, -1).float()

    def release(self, sample_ids: Sequence[str]) -> int:
        """Drop the caches of aborted or dropped samples; returns how many were live (unknown ids are fine)."""
        return sum(self._states.pop(sample_id, None) is not None for sample_id in sample_ids)

    def cached_bytes(self) -> int:
        """Bytes of K/V tensors held by every live cache."""
        total = 0
        for state in self._states.values():
            for layer in getattr(state.cache, "layers", []):
                for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                    if isinstance(tensor, torch.Tensor):
                        total += tensor.numel() * tensor.element_size()
        return total


def causal_lm_step(model: torch.nn.Module, temperature: float) -> ChunkStep:
    """Chunk step of a Hugging Face causal LM: temperature-scaled fp32 logits, as upstream's `Actor.forward`."""

    def step(input_ids, position_ids, cache):
        output = model(input_ids, position_ids=position_ids, past_key_values=cache, use_cache=True)
        logits = output["logits"].to(torch.float32)
        return logits / temperature if temperature != 1.0 else logits

    return step


def critic_step(critic: torch.nn.Module) -> ChunkStep:
    """Chunk step of upstream's critic class: value head on the backbone's hidden states, normalized as upstream."""

    def step(input_ids, position_ids, cache):
        backbone = getattr(critic, critic.base_model_prefix)
        hidden = backbone(input_ids, position_ids=position_ids, past_key_values=cache, use_cache=True)[
            "last_hidden_state"
        ]
        values = getattr(critic, critic.value_head_prefix)(hidden).squeeze(-1)
        if critic.normalize_reward:
            values = (values - critic.mean) / critic.std
        return values

    return step


def max_live_caches(args) -> int:
    """Per scorer actor, the most samples whose KV cache may live at once: `--darts.max_live_caches` (default 64)."""
    return args.darts.max_live_caches


class ChunkScoringMixin:
    """The remote chunk methods, shared by the CPU actors and the GPU chunked actors; `self.chunks` is a ChunkCache.

    `chunk_module_attr` names the trainable module (policy `actor`, critic `critic`) that is put in eval mode for a
    chunk forward, as upstream's forward does for old log-probs and values; None for frozen scorers.
    """

    chunks: ChunkCache
    chunk_module_attr: str | None = None

    def forward_chunk(self, sample_id: str, tokens: list[int]) -> torch.Tensor:
        module = getattr(self, self.chunk_module_attr) if self.chunk_module_attr else None
        if module is None:
            return self.chunks.forward_chunk(sample_id, tokens)
        was_training = module.training
        module.eval()
        try:
            return self.chunks.forward_chunk(sample_id, tokens)
        finally:
            module.train(was_training)

    def finish_chunks(self, sample_id: str, action_mask: torch.Tensor) -> torch.Tensor:
        return self.chunks.finish(sample_id, action_mask)

    def release_chunks(self, sample_ids: list[str]) -> int:
        return self.chunks.release(sample_ids)

    def num_live_caches(self) -> int:
        return len(self.chunks)

    def chunk_cache_stats(self) -> dict[str, float]:
        return {
            "live": len(self.chunks),
            "bytes": self.chunks.cached_bytes(),
            "peak_bytes": self.chunks.peak_bytes,
            "peak_live": self.chunks.peak_live,
            "busy_s": self.chunks.busy_s,
            "at": time.time(),  # when this call ran: queued behind the actor's chunk forwards, so it shows a backlog
        }

    def darts_forward(self, sequences, action_mask, attention_mask, darts_precomputed, **kwargs) -> torch.Tensor:
        """Upstream's `forward` for one micro-batch, except rows whose scores came from chunks (token streaming).

        `darts_precomputed[i]` is None (row i runs the forward) or row i's `(1, A_i)` scores from `finish_chunks`,
        A_i <= A, right-padded with zeros like the batch. The remaining rows run through `self.forward` together.
        """
        if len(darts_precomputed) != sequences.shape[0]:
            raise ValueError(f"{len(darts_precomputed)} precomputed entries for a micro-batch of {sequences.shape[0]}")
        batch = sequences.shape[0]
        multimodal = kwargs.get("mm_train_inputs_list") or [None] * batch
        if any(m is not None and p is not None for m, p in zip(multimodal, darts_precomputed)):
            raise ValueError("token-streamed rows cannot carry multimodal inputs; drop --darts.stream_tokens for VLMs")
        rows = [i for i, p in enumerate(darts_precomputed) if p is None]
        out = torch.zeros(action_mask.shape, dtype=torch.float32)
        if rows:
            index = torch.tensor(rows)
            # Per-row list arguments (upstream's mm_train_inputs_list) follow the selected rows.
            kwargs = {k: [v[i] for i in rows] if isinstance(v, list) and len(v) == batch else v for k, v in kwargs.items()}
            computed = self.forward(sequences[index], action_mask[index], attention_mask[index], **kwargs).to("cpu")
            out = out.to(computed.dtype)
            out[index] = computed
        for i, scores in enumerate(darts_precomputed):
            if scores is not None:
                width = scores.shape[-1]
                if width > out.shape[1]:
                    raise ValueError(f"row {i}: {width} chunk scores for a micro-batch of {out.shape[1]} actions")
                out[i, :width] = scores.reshape(-1).to(out.dtype)
                out[i] *= action_mask[i].to(out.dtype)
        return out
