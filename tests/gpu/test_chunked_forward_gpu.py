"""GPU chunk path: the chunked log-probs of a CUDA causal LM equal its full forward (fp32). Skipped without CUDA."""

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.timeout(600),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_chunked_equals_full_on_cuda(tiny_model_path):
    from transformers import AutoModelForCausalLM

    from openrlhf_darts.core.streaming import chunk_spans
    from openrlhf_darts.scoring.chunk_cache import ChunkCache, causal_lm_step

    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_path, torch_dtype=torch.float32, attn_implementation="sdpa"
    )
    model = model.cuda().eval()
    g = torch.Generator().manual_seed(0)
    seq = torch.cat([torch.tensor([3, 17, 42, 99, 7, 250]), torch.randint(5, 1000, (40,), generator=g)])[None]
    with torch.no_grad():
        logits = model(seq.cuda()).logits.float()
    # Full forward: log p(seq[t+1] | seq[:t+1]) for the 40 response tokens.
    full = torch.log_softmax(logits[:, :-1], -1).gather(-1, seq[:, 1:, None].cuda())[0, -40:, 0].cpu()
    cache = ChunkCache(causal_lm_step(model, 1.0), "logprobs", max_live=1, device="cuda")
    for start, end in chunk_spans(6, 40, 0, 16, finished=True):
        cache.forward_chunk("s", seq[0, start:end].tolist())
    chunked = cache.finish("s", torch.ones(1, 40))[0]
    assert torch.allclose(chunked, full, atol=1e-4), (chunked - full).abs().max()
    assert len(cache) == 0

