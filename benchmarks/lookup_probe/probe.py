"""Probe (not product code): can the tiny model learn to copy a lookup hop? Fine-tunes a fresh Qwen2 of the
tiny-verbose shape on multi-hop lookups only (`bench.tasks.make_lookup_problems`, half the targets hop by hop, half
the value at once), then samples 100 held-out problems x 4 at temperature 1 with Hugging Face `generate` and prints
the accuracy of the answers written hop by hop and of those stating the value at once, as one JSON line.

    python benchmarks/lookup_probe/probe.py FORMAT STEPS HIDDEN LAYERS [HOPS] [HOP_SHARE] [KV_HEADS] [REPEAT_SHARE]

FORMAT: `spaced` (the task as it is: "D = B."), `eq` ("D=B."), `adj` (key and value on adjacent tokens: "DB.",
"A17."); HOPS like `2,3`; KV_HEADS 1 as in local.sft, or HIDDEN/32 for full multi-head attention; REPEAT_SHARE: the
share of examples that instead ask to repeat the facts verbatim (a dense copying curriculum). Results of the runs in
results.jsonl; reading in benchmarks/README.md ("lookup_probe").
"""
import math, random, re, sys, time, json
import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
from openrlhf_darts.models import resolve_model
from openrlhf_darts.bench.tasks import make_lookup_problems, ANSWER_INSTRUCTION
from openrlhf_darts.local.sft import lookup_hops

fmt, steps, hidden, layers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
hops = tuple(int(x) for x in sys.argv[5].split(",")) if len(sys.argv) > 5 else (2, 3)
share = float(sys.argv[6]) if len(sys.argv) > 6 else 0.5
torch.set_num_threads(1); torch.manual_seed(0); rng = random.Random(0)
tok = AutoTokenizer.from_pretrained(resolve_model("tiny"))

def convert(s):
    if fmt == "spaced": return s
    if fmt == "eq": return re.sub(r"([A-Z]) = ", r"\1=", s)
    if fmt == "adj": return re.sub(r"([A-Z]) = ", r"\1", s)
    raise SystemExit(fmt)

def render(p, r):
    hs, short = lookup_hops(p["prompt"], p["answer"])
    body = " ".join(hs) if r.random() < share else short
    pr = p["prompt"].replace(" " + ANSWER_INSTRUCTION, "")
    return convert(pr), convert(body) + f"\nAnswer: {p['answer']}"

def enc(prompt, target):
    pre = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    pi = tok(pre, add_special_tokens=False)["input_ids"]
    ti = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return pi + ti, len(pi)

B = 16
probs = make_lookup_problems(steps * B, 123, hops=hops)
REP = float(sys.argv[8]) if len(sys.argv) > 8 else 0.0
def rep(p):
    pr, _ = render(p, rng)
    facts = pr.split(" What is")[0]
    return pr.split(" What is")[0] + " Repeat the facts.", facts + "\nAnswer: 0"
ex = [enc(*(rep(p) if rng.random() < REP else render(p, rng))) for p in probs]
print("example:", tok.decode(ex[0][0]))
batches = [ex[i:i+B] for i in range(0, len(ex), B)]
cfg = Qwen2Config(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    hidden_size=hidden, intermediate_size=hidden*8//3//32*32 or 128, num_hidden_layers=layers, num_attention_heads=hidden//32,
    num_key_value_heads=int(sys.argv[7]) if len(sys.argv) > 7 else 1, max_position_embeddings=1024, tie_word_embeddings=True)
model = Qwen2ForCausalLM(cfg)
print("params", sum(p.numel() for p in model.parameters()))
opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
warm = max(1, steps // 10)
sch = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s+1)/warm if s < warm else 0.1 + 0.45*(1+math.cos(math.pi*(s-warm)/(steps-warm))))
t0 = time.time()
for k, b in enumerate(batches):
    w = max(len(i) for i, _ in b)
    ii = torch.full((len(b), w), tok.pad_token_id); lab = torch.full((len(b), w), -100); am = torch.zeros((len(b), w), dtype=torch.long)
    for r, (ids, pl) in enumerate(b):
        ii[r, :len(ids)] = torch.tensor(ids); lab[r, pl:len(ids)] = torch.tensor(ids[pl:]); am[r, :len(ids)] = 1
    loss = model(input_ids=ii, attention_mask=am, labels=lab).loss
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); sch.step()
    if k % 100 == 0: print(k, round(loss.item(), 3), round(time.time()-t0), flush=True)
model.eval()
test = make_lookup_problems(100, 999, hops=hops)
res = {"hop": [0, 0], "short": [0, 0]}; lens = []
with torch.no_grad():
    for p in test:
        prompt, _ = render(p, rng)
        pre = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        ids = tok(pre, return_tensors="pt", add_special_tokens=False)["input_ids"]
        out = model.generate(ids.repeat(4, 1), do_sample=True, temperature=1.0, max_new_tokens=60, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        for o in out:
            text = tok.decode(o[ids.shape[1]:], skip_special_tokens=True)
            m = re.search(r"Answer: (\d+)", text); right = bool(m and m.group(1) == p["answer"])
            first = text.split("\n")[0]
            if len(lens) < 6: print(repr(prompt[:80]), '->', repr(text), p['answer'])
            style = "hop" if len(re.findall(r"[A-Z]", first)) > 1 else "short"
            res[style][0] += right; res[style][1] += 1; lens.append(len(o) - ids.shape[1])
print(json.dumps({"fmt": fmt, "steps": steps, "hidden": hidden, "layers": layers, "hops": hops, "secs": round(time.time()-t0),
  "hop_acc": res["hop"][0]/max(1,res["hop"][1]), "hop_n": res["hop"][1], "short_acc": res["short"][0]/max(1,res["short"][1]), "short_n": res["short"][1]}))
