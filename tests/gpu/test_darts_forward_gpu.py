"""Token streaming's collect side on CUDA in bf16: `ChunkScoringMixin.darts_forward` against the plain batch forward.

Pure torch (no transformers, vLLM, Ray or OpenRLHF), so it runs wherever torch sees a GPU. The scorer is a small causal
transformer written here, with its own KV cache, standing in for upstream's reference actor: `forward` scores a
right-padded micro-batch the way upstream's `Actor.forward` does (log-softmax of the logits at positions 0..T-2,
gathered at tokens 1..T-1, times the action mask). The chunk side is the product's `ChunkCache` + `ChunkScoringMixin`:
the long row's log-probs come from chunks fed while it "decoded", the short rows from the forward inside
`darts_forward`.

bf16 changes the rounding, not the result: the chunked path accumulates in a different order (one chunk attends to the
cached prefix) than the one-shot forward, so the two bf16 results differ by rounding. The oracle is the same weights
in fp32: the darts_forward output must be no further from it than the plain bf16 forward is (mean |error| within
+25%, max |error| within 2x: both are bf16 rounding of the same computation, so neither should be markedly worse).

The `cpu-fp32-smoke` parameter runs the same body on the CPU in fp32, where both paths must agree to 1e-5 (fp32
rounding of log-probs around -7), and `cpu-bf16-smoke` runs the bf16 criterion on the CPU: smoke checks that the test
itself works on machines without a GPU (CPU bf16 kernels round both paths almost identically, so only CUDA tests it).
"""

import math

import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.timeout(600)]

VOCAB, DIM, HEADS, LAYERS, MAX_POS = 1024, 128, 4, 2, 2048
PROMPT, LONG, SHORTS, CHUNK = 32, 600, (40, 90, 150, 260), 64


class KVCache:
    """Per-layer keys and values of every token fed so far (`layers[i].keys`: (1, H, S, D), as `ChunkCache` reads)."""

    class Layer:
        def __init__(self):
            self.keys = None
            self.values = None

    def __init__(self):
        self.layers = [KVCache.Layer() for _ in range(LAYERS)]

    def update(self, index: int, keys, values):
        layer = self.layers[index]
        layer.keys = keys if layer.keys is None else torch.cat([layer.keys, keys], dim=2)
        layer.values = values if layer.values is None else torch.cat([layer.values, values], dim=2)
        return layer.keys, layer.values


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1, self.norm2 = torch.nn.LayerNorm(DIM), torch.nn.LayerNorm(DIM)
        self.qkv, self.out = torch.nn.Linear(DIM, 3 * DIM), torch.nn.Linear(DIM, DIM)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(DIM, 4 * DIM), torch.nn.GELU(), torch.nn.Linear(4 * DIM, DIM))

    def forward(self, x, mask, cache, index):
        batch, length, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.update(index, k, v)
        attended = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, length, DIM))
        return x + self.mlp(self.norm2(x))


class TinyCausalLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.pos = torch.nn.Embedding(VOCAB, DIM), torch.nn.Embedding(MAX_POS, DIM)
        self.blocks = torch.nn.ModuleList(Block() for _ in range(LAYERS))
        self.norm, self.head = torch.nn.LayerNorm(DIM), torch.nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, input_ids, position_ids, mask, cache=None):
        x = self.embed(input_ids) + self.pos(position_ids)
        for index, block in enumerate(self.blocks):
            x = block(x, mask, cache, index)
        return self.head(self.norm(x))


def _chunk_step(model):
    """`ChunkCache`'s step: fp32 logits (1, C, V) of a chunk that attends to every cached token and causally within."""

    def step(input_ids, position_ids, cache):
        past = 0 if cache.layers[0].keys is None else cache.layers[0].keys.shape[2]
        length = input_ids.shape[1]
        mask = torch.ones(length, past + length, dtype=torch.bool, device=input_ids.device).tril(diagonal=past)
        return model(input_ids, position_ids, mask, cache).float()

    return step


def _scorer(model, device):
    from openrlhf_darts.scoring.chunk_cache import ChunkCache, ChunkScoringMixin

    class Scorer(ChunkScoringMixin):
        def __init__(self):
            self.chunks = ChunkCache(_chunk_step(model), "logprobs", max_live=4, device=device, new_cache=KVCache)

        @torch.no_grad()
        def forward(self, sequences, action_mask, attention_mask, **_):
            return _plain_logprobs(model, sequences, action_mask, attention_mask, device)

    return Scorer()


@torch.no_grad()
def _plain_logprobs(model, sequences, action_mask, attention_mask, device):
    """Upstream's batch scoring of a right-padded batch: log p(token_t | tokens_<t) at the action positions, (B, A)."""
    seq, att = sequences.to(device), attention_mask.to(device).bool()
    length = seq.shape[1]
    positions = (att.long().cumsum(-1) - 1).clamp(min=0)
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    mask = (causal[None] & att[:, None, :])[:, None]  # (B, 1, T, T): causal, padding keys masked
    logits = model(seq, positions, mask).float()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, seq[:, 1:, None])[..., 0]
    return (logp[:, -action_mask.shape[1] :] * action_mask.to(device).float()).cpu()


def _batch():
    """One long row (prompt 32 + 600) and four short ones, right-padded; actions are the response tokens."""
    g = torch.Generator().manual_seed(1)
    lengths = [PROMPT + LONG] + [PROMPT + s for s in SHORTS]
    width = max(lengths)
    sequences = torch.zeros(len(lengths), width, dtype=torch.long)
    attention = torch.zeros_like(sequences)
    actions = torch.zeros(len(lengths), width - 1, dtype=torch.bool)
    for i, n in enumerate(lengths):
        sequences[i, :n] = torch.randint(1, VOCAB, (n,), generator=g)
        attention[i, :n] = 1
        actions[i, PROMPT - 1 : n - 1] = True
    return sequences, attention, actions


def _darts_forward(model, device, sequences, attention, actions):
    from openrlhf_darts.core.streaming import chunk_spans

    scorer = _scorer(model, device)
    n = int(attention[0].sum())
    spans = chunk_spans(PROMPT, n - PROMPT, 0, CHUNK, finished=True)
    assert len(spans) == math.ceil(n / CHUNK)  # 632 tokens in chunks of 64: 10 chunks, the last one of 56
    for start, end in spans:
        scorer.forward_chunk("long", sequences[0, start:end].tolist())
    precomputed = [scorer.finish_chunks("long", actions[:1, : n - 1])] + [None] * (len(sequences) - 1)
    out = scorer.darts_forward(sequences, actions, attention, precomputed)
    assert len(scorer.chunks) == 0  # finish_chunks freed the cache
    return out


@pytest.mark.parametrize(
    "device, dtype",
    [
        pytest.param(
            "cuda",
            torch.bfloat16,
            id="cuda-bf16",
            marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")],
        ),
        pytest.param("cpu", torch.float32, id="cpu-fp32-smoke"),
        pytest.param("cpu", torch.bfloat16, id="cpu-bf16-smoke"),
    ],
)
def test_darts_forward_equals_plain_forward(device, dtype):
    torch.manual_seed(0)
    reference = TinyCausalLM().eval()  # fp32 weights: the oracle
    model = TinyCausalLM().eval()
    model.load_state_dict(reference.state_dict())
    model = model.to(device=device, dtype=dtype)
    reference = reference.to(device)  # TF32 is off by default for matmuls, so the oracle is fp32
    sequences, attention, actions = _batch()

    plain = _plain_logprobs(model, sequences, actions, attention, device)
    darts = _darts_forward(model, device, sequences, actions=actions, attention=attention)
    truth = _plain_logprobs(reference, sequences, actions, attention, device)
    mask = actions.float()
    assert darts.shape == plain.shape == actions.shape
    assert torch.equal(darts * (1 - mask), torch.zeros_like(darts))  # padding and prompt positions stay 0
    if dtype == torch.float32:
        assert (darts - plain).abs().max() < 1e-5, (darts - plain).abs().max()
        return
    plain_error, darts_error = (plain - truth).abs(), (darts - truth).abs()
    tokens = mask.sum()
    mean_plain, mean_darts = (plain_error * mask).sum() / tokens, (darts_error * mask).sum() / tokens
    assert mean_plain > 0, "bf16 scored exactly like fp32: the dtype did not take effect"
    assert mean_darts <= 1.25 * mean_plain, (float(mean_darts), float(mean_plain))
    assert darts_error.max() <= 2 * plain_error.max(), (float(darts_error.max()), float(plain_error.max()))
