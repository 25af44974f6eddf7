"""Token streaming on CUDA: `ChunkScoringMixin.darts_forward` over a right-padded micro-batch whose long rows were
scored chunk by chunk, against the plain batch forward (fp32 with TF32 off, and bf16), plus what it saves in time.

The scorer here is a minimal stand-in for upstream's reference actor: `forward` computes action log-probs of a
right-padded batch the way upstream's `Actor.forward` does (log-softmax of the logits at positions 0..T-2, gathered at
tokens 1..T-1, times the action mask). The chunk side is the product's own `ChunkCache` + `ChunkScoringMixin`, on the
CUDA device. Batch: 1 long sample (prompt 256 + 3,840 response tokens) and 7 short ones (prompt 256 + 256-1,024).
Prints and writes JSON: max |darts_forward - forward| per dtype, and wall time of the plain batch forward vs the
darts_forward call left after generation (long row precomputed), best of 3.
Usage: python benchmarks/gpu/darts_forward_check.py [--out DIR] [--small]  (--small: CPU-sized smoke run)
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from openrlhf_darts.core.streaming import chunk_spans  # noqa: E402
from openrlhf_darts.scoring.chunk_cache import ChunkCache, ChunkScoringMixin, causal_lm_step  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from chunked_forward_check import build as build_with_config  # noqa: E402  (same model shapes as that check)


def build(small: bool, dtype, device):
    return build_with_config(small, dtype, device)[0]


class Scorer(ChunkScoringMixin):
    def __init__(self, model, device):
        self.model, self.device = model, device
        self.chunks = ChunkCache(causal_lm_step(model, 1.0), "logprobs", max_live=8, device=device)

    @torch.no_grad()
    def forward(self, sequences, action_mask, attention_mask, **_):
        seq, att = sequences.to(self.device), attention_mask.to(self.device)
        positions = (att.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(seq, attention_mask=att, position_ids=positions).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, seq[:, 1:, None])[..., 0]
        return (logp[:, -action_mask.shape[1] :] * action_mask.to(self.device).float()).cpu()


def batch(small: bool):
    g = torch.Generator().manual_seed(1)
    prompt, long_resp, shorts = (16, 200, [20, 40, 60]) if small else (256, 3840, [256, 384, 512, 640, 768, 896, 1024])
    lengths = [prompt + long_resp] + [prompt + s for s in shorts]
    width = max(lengths)
    seqs = torch.full((len(lengths), width), 3, dtype=torch.long)
    att = torch.zeros_like(seqs)
    act = torch.zeros(len(lengths), width - 1, dtype=torch.bool)
    for i, n in enumerate(lengths):
        seqs[i, :n] = torch.randint(5, 1000, (n,), generator=g)
        att[i, :n] = 1
        act[i, prompt - 1 : n - 1] = True
    return seqs, att, act, prompt


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_of(fn, device, repeats=3):
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


def check(dtype, small, device, chunk):
    model = build(small, dtype, device)
    scorer = Scorer(model, device)
    seqs, att, act, prompt = batch(small)
    plain = scorer.forward(seqs, act, att)
    n = int(att[0].sum())
    for start, end in chunk_spans(prompt, n - prompt, 0, chunk, finished=True):
        scorer.forward_chunk("long", seqs[0, start:end].tolist())
    long_scores = scorer.finish_chunks("long", act[:1, : n - 1])
    rows = [long_scores] + [None] * (len(seqs) - 1)
    mixed = scorer.darts_forward(seqs, act, att, rows)
    diff = float((mixed - plain).abs().max())
    t_plain = best_of(lambda: scorer.forward(seqs, act, att), device)
    # After generation only the short rows remain; the long row's forward already ran while it decoded.
    t_mixed = best_of(lambda: scorer.darts_forward(seqs, act, att, rows), device)
    return {"max_abs_diff": diff, "plain_forward_s": t_plain, "darts_forward_s": t_mixed,
            "time_ratio": t_mixed / t_plain, "live_caches_after": len(scorer.chunks)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "small": args.small}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        report[name] = check(dtype, args.small, device, chunk=16 if args.small else 512)
        print(name, json.dumps(report[name]), flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "darts_forward.json"), "w") as f:
            json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
