"""Token-level streaming on CUDA: chunked KV-cached scoring vs one full forward (fp32 and bf16), timing and KV memory.

Runs `openrlhf_darts.scoring.chunk_cache.ChunkCache` (the same chunk code the scorers use) on a randomly initialised
Qwen2-architecture model of a 0.4B-class shape, on whatever CUDA device is present. Prints and writes JSON:
- max |chunked - full| of the per-token log-probs in fp32 (TF32 off) and in bf16;
- wall time of one full forward over the whole sequence vs the last chunk alone (what remains to score when a long
  candidate stops, if its prefix was scored while it decoded) and vs all chunks together;
- KV bytes held for the sample against 2 * layers * kv_heads * head_dim * bytes * tokens.
Usage: python benchmarks/gpu/chunked_forward_check.py [--out DIR] [--small]  (--small: CPU-sized smoke run)
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from openrlhf_darts.core.streaming import chunk_spans  # noqa: E402
from openrlhf_darts.scoring.chunk_cache import ChunkCache, causal_lm_step  # noqa: E402


def build(small: bool, dtype, device):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if small:
        cfg = Qwen2Config(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    else:
        cfg = Qwen2Config(vocab_size=32000, hidden_size=2048, intermediate_size=5504, num_hidden_layers=8,
                          num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=16384)
    cfg._attn_implementation = "sdpa"
    model = Qwen2ForCausalLM(cfg).to(device=device, dtype=dtype).eval()
    return model, cfg


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def run(model, cfg, seq, prompt_len, chunk, device):
    logits = model(seq.to(device)).logits.float()
    full = torch.log_softmax(logits[0, :-1], -1).gather(-1, seq[0, 1:, None].to(device))[:, 0].cpu()
    del logits
    # Full-forward time, best of 3.
    times = []
    for _ in range(3):
        sync(device); t = time.perf_counter(); model(seq.to(device)); sync(device); times.append(time.perf_counter() - t)
    cache = ChunkCache(causal_lm_step(model, 1.0), "logprobs", max_live=1, device=device)
    spans = chunk_spans(prompt_len, seq.shape[1] - prompt_len, 0, chunk, finished=True)
    # Twice: the first pass meets every (chunk, prefix) shape for the first time; the second is the steady state.
    for sample in ("cold", "warm"):
        chunk_times = []
        for start, end in spans:
            sync(device); t = time.perf_counter()
            cache.forward_chunk(sample, seq[0, start:end])
            sync(device); chunk_times.append(time.perf_counter() - t)
        kv_bytes = cache.cached_bytes()
        chunked = torch.cat(cache._states[sample].outputs)
        cache.release([sample])
        if sample == "cold":
            cold_all = sum(chunk_times)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    expected_kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * seq.shape[1] * model.dtype.itemsize
    return {
        "max_abs_diff": (chunked - full).abs().max().item(),
        "mean_abs_diff": (chunked - full).abs().mean().item(),
        "full_forward_s": min(times),
        "last_chunk_s": chunk_times[-1],
        "all_chunks_s": sum(chunk_times),
        "all_chunks_first_pass_s": cold_all,
        "num_chunks": len(spans),
        "kv_bytes": kv_bytes,
        "kv_bytes_formula": expected_kv,
    }, full


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "runs/chunked_gpu"))
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    prompt_len, response_len, chunk = (16, 96, 32) if args.small else (512, 7680, 512)
    g = torch.Generator().manual_seed(1)
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "prompt_tokens": prompt_len, "response_tokens": response_len, "chunk_tokens": chunk}
    full32 = None
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model, cfg = build(args.small, dtype, device)
        vocab = cfg.vocab_size
        seq = torch.randint(0, vocab, (1, prompt_len + response_len), generator=g if full32 is None else
                            torch.Generator().manual_seed(1))
        result, full = run(model, cfg, seq, prompt_len, chunk, device)
        if full32 is None:
            full32 = full
        else:
            result["bf16_full_vs_fp32_full_max_abs"] = (full - full32).abs().max().item()
        report[name] = result
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["params_M"] = round(sum(p.numel() for p in build(args.small, torch.float32, "cpu")[0].parameters()) / 1e6, 1)
    print(json.dumps(report, indent=2))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "chunked_forward_check.json"), "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
