"""Streaming benchmark: how much experience-making forward time hides behind generation, on one CPU machine.

    python -m openrlhf_darts.bench.streaming [--model tiny|smollm2|PATH] [--prompts 8] [--n 4] [--max-tokens 96]
                                             [--steps 2] [--chunk-tokens 32] [--out runs/bench_streaming]

One local Ray cluster, one real DARTS engine (OpenRLHF's `create_vllm_engines`), CPU policy + reference actors
(`backends/cpu`). Each step runs twice on fresh prompts from the same built-in task, alternating the order:

- ``plain``: `generate_samples`, then upstream's `make_experience_batch` (every forward after generation);
- ``stream``: `generate_samples` with the `DartsExperienceMaker` attached as the group sink (forwards of finished groups
  run while vLLM still generates), then `make_experience_batch` (collect + advantages).

Printed and saved (``report.json``): generation and make-experience wall time per variant, the make-experience ratio
stream / plain, ``timing/darts_overlap_hidden_ratio`` and ``timing/darts_stream_wait``; and, for the token-level path,
the peak KV-cache bytes of the reference actor when the step's kept samples are scored chunk by chunk
(``--chunk-tokens``), every sample live at once (the worst case the engine-side emission would reach), with a check that
the chunked log-probs equal the full forward. CPU caveat: the engine and the model actors share the same cores, so
overlap on CPU trades decode speed for hidden forwards; the ratio shows what the schedule hides, not a GPU speedup.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

TINY_EXTRA_EOS = 16  # ordinary tokens added as EOS ids so the random tiny model stops at varied lengths


def _stopping_copy(model_path: str, work: Path, extra: int) -> str:
    """A copy of the model whose generation_config lists `extra` more EOS ids (vLLM stops every request on them)."""
    path = work / "model"
    shutil.copytree(model_path, path)
    config_file = path / "generation_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    eos = config.get("eos_token_id")
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    config["eos_token_id"] = eos + list(range(vocab - extra, vocab))
    config_file.write_text(json.dumps(config))
    return str(path)


def _batches(prompts: list[str], labels: list[str], batch: int):
    return [
        (["bench"] * len(prompts[i : i + batch]), prompts[i : i + batch], labels[i : i + batch], [None] * batch)
        for i in range(0, len(prompts), batch)
    ]


def run(args: argparse.Namespace) -> dict:
    import ray
    import torch
    from transformers import AutoTokenizer

    from openrlhf_darts import upstream
    from openrlhf_darts.backends.cpu.args import cpu_args
    from openrlhf_darts.backends.cpu.groups import cpu_actor_group
    from openrlhf_darts.bench.rollout import REWARD_FILE, builtin_prompts, create_engine, init_ray
    from openrlhf_darts.config import DartsConfig
    from openrlhf_darts.models import resolve_model
    from openrlhf_darts.trainer.experience_maker import DartsExperienceMaker
    from openrlhf_darts.trainer.samples_generator import DartsSamplesGenerator

    work = Path(tempfile.mkdtemp(prefix="darts_bench_streaming_"))
    model_path = resolve_model(args.model)
    if args.model == "tiny":
        model_path = _stopping_copy(model_path, work, TINY_EXTRA_EOS)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    init_ray()
    engine = create_engine(model_path, args.seed, max_model_len=1024, remote_rm_url=REWARD_FILE)

    overrides = {
        "rollout.n_samples_per_prompt": args.n,
        "rollout.batch_size": args.prompts,
        "rollout.micro_batch_size": args.micro_batch_size,
    }
    cargs = cpu_args(model_path, str(work), **overrides)
    cargs.darts = argparse.Namespace(enable=True, stream=True)
    config = DartsConfig.from_args(cargs)
    strategy = upstream.model_side_strategy(cargs)
    policy, reference = cpu_actor_group("policy"), cpu_actor_group("reference")
    ray.get(
        policy.async_init_model_from_pretrained(strategy, model_path, 10, None)
        + reference.async_init_model_from_pretrained(strategy, model_path)
    )
    kl = upstream.fixed_kl_controller(cargs.algo.kl.init_coef)
    plain_maker = upstream.RemoteExperienceMaker(policy, None, None, reference, kl, strategy, tokenizer)
    stream_maker = DartsExperienceMaker(policy, None, None, reference, kl, strategy, tokenizer, config=config)

    total = args.prompts * (args.steps * 2 + 1)
    prompts, labels = builtin_prompts(tokenizer, total, args.seed)
    loader = iter(_batches(prompts, labels, args.prompts))
    gen_kwargs = dict(temperature=1.0, top_p=1.0, max_new_tokens=args.max_tokens, max_len=1024)

    def one_step(streaming: bool) -> dict:
        generator = DartsSamplesGenerator(strategy, [next(loader)], None, tokenizer, [engine], config)
        maker = stream_maker if streaming else plain_maker
        generator.group_sink = stream_maker if streaming else None
        t0 = time.perf_counter()
        samples, *_ = generator.generate_samples(**gen_kwargs)
        t1 = time.perf_counter()
        experiences = maker.make_experience_batch(samples)
        t2 = time.perf_counter()
        record = {
            "variant": "stream" if streaming else "plain",
            "generation_s": t1 - t0,
            "make_experience_s": t2 - t1,
            "samples": len(samples),
            "response_tokens": float(sum(float(e.response_length.sum()) for e in experiences)),
        }
        if streaming:
            record.update(stream_maker.pop_metrics())
        return record, samples

    one_step(False)  # warm-up: first generate and first forwards are slower
    records, last_samples = [], None
    for step in range(args.steps):
        for streaming in ((False, True) if step % 2 == 0 else (True, False)):
            record, samples = one_step(streaming)
            record["step"] = step
            records.append(record)
            last_samples = samples
            print(json.dumps(record))

    chunk = _chunked_memory(ray, torch, reference, last_samples, args.chunk_tokens)
    plain = [r for r in records if r["variant"] == "plain"]
    stream = [r for r in records if r["variant"] == "stream"]
    mean = lambda rows, key: statistics.fmean(r[key] for r in rows)  # noqa: E731
    summary = {
        "model": args.model,
        "prompts": args.prompts,
        "n": args.n,
        "max_tokens": args.max_tokens,
        "steps": args.steps,
        "plain_generation_s": mean(plain, "generation_s"),
        "plain_make_experience_s": mean(plain, "make_experience_s"),
        "stream_generation_s": mean(stream, "generation_s"),
        "stream_make_experience_s": mean(stream, "make_experience_s"),
        "make_experience_ratio_stream_over_plain": mean(stream, "make_experience_s")
        / mean(plain, "make_experience_s"),
        "plain_total_s": mean(plain, "generation_s") + mean(plain, "make_experience_s"),
        "stream_total_s": mean(stream, "generation_s") + mean(stream, "make_experience_s"),
        "timing/darts_overlap_hidden_ratio": mean(stream, "timing/darts_overlap_hidden_ratio"),
        "timing/darts_stream_wait": mean(stream, "timing/darts_stream_wait"),
        **chunk,
    }
    ray.shutdown()
    return {"summary": summary, "steps": records}


def _chunked_memory(ray, torch, reference, samples, chunk_tokens: int) -> dict:
    """Feed every sample's chunks to the reference actor round-robin (all live at once), then finish them."""
    from openrlhf_darts.core.streaming import chunk_spans

    (actor,) = reference._actor_handlers
    items = []
    for i, sample in enumerate(samples):
        seq = sample.sequences[0]
        num_actions = sample.action_mask.shape[1]
        prompt = seq.shape[0] - num_actions
        spans = chunk_spans(prompt, num_actions, 0, chunk_tokens, finished=True)
        items.append((f"s{i}", seq, sample, spans))
    start = time.perf_counter()
    for step in range(max(len(s) for *_, s in items)):
        refs = [actor.forward_chunk.remote(sid, seq[a:b].tolist()) for sid, seq, _, spans in items if step < len(spans)
                for a, b in [spans[step]]]  # fmt: skip
        ray.get(refs)
    stats = ray.get(actor.chunk_cache_stats.remote())
    max_diff = 0.0
    for sid, seq, sample, _ in items:
        chunked = ray.get(actor.finish_chunks.remote(sid, sample.action_mask))
        full = ray.get(actor.forward.remote(sample.sequences, sample.action_mask, sample.attention_mask))
        max_diff = max(max_diff, float((chunked - full).abs().max()))
    elapsed = time.perf_counter() - start
    assert ray.get(actor.num_live_caches.remote()) == 0
    return {
        "chunk_tokens": chunk_tokens,
        "chunk_peak_kv_bytes": stats["peak_bytes"],
        "chunk_peak_live_samples": stats["peak_live"],
        "chunked_vs_full_max_abs_diff": max_diff,
        "chunked_scoring_s": elapsed,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny | smollm2 | a local HF model folder")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step (--rollout.batch_size)")
    parser.add_argument("--n", type=int, default=4, help="samples kept per prompt (--rollout.n_samples_per_prompt)")
    parser.add_argument("--micro-batch-size", type=int, default=2, help="--rollout.micro_batch_size")
    parser.add_argument("--max-tokens", type=int, default=96, help="--rollout.max_new_tokens")
    parser.add_argument("--steps", type=int, default=2, help="measured steps per variant (after one warm-up)")
    parser.add_argument(
        "--chunk-tokens", type=int, default=32, help="--darts.stream_chunk_tokens for the memory figure"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench_streaming")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    for name in ("prompts", "n", "micro_batch_size", "max_tokens", "steps", "chunk_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    report = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=2))
    print(f"wrote {out / 'report.json'}")
    return report


if __name__ == "__main__":
    main()
