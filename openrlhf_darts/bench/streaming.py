"""Streaming benchmark: how much experience-making forward time hides behind generation, on one CPU machine.

    python -m openrlhf_darts.bench.streaming [--model tiny|tiny-verbose|smollm2|PATH] [--prompts 8] [--n 4]
                                             [--max-tokens 96] [--steps 2] [--chunk-tokens 32]
                                             [--candidates dual_end|exactly_n] [--variants plain,stream,tokens]
                                             [--out runs/bench_streaming]

One local Ray cluster, one real DARTS engine (OpenRLHF's `create_vllm_engines`), CPU policy + reference actors
(`backends/cpu`, GRPO: no critic). Each step runs three variants on fresh prompts from the same built-in task, in a
rotating order, with the same DARTS plan (`--candidates`):

- ``plain``: `generate_samples`, then upstream's `make_experience_batch` (every forward after generation);
- ``stream`` (`--darts.stream`): forwards of released samples run while vLLM still generates: a dual-end group's K
  short members as soon as they are final, the long end when the group ends (per-sample release);
- ``stream_group`` (optional, `--variants`): ``stream`` with whole groups only (`DartsSamplesGenerator.early_release =
  False`), what `--darts.stream` did before per-sample release;
- ``tokens`` (`--darts.stream --darts.stream_tokens`): as ``stream``, and the engine also emits chunks of
  `--chunk-tokens` tokens of every certainly-kept candidate while it decodes; the scorers' KV caches score them, and the
  wave forwards use those scores for the finished samples.

Printed and saved (``report.json``, ``streaming.png``): generation and make-experience wall time per variant (make
experience = from the end of generation to the Experiences, i.e. the forward time *not* hidden), the make-experience
ratios against ``plain``, ``timing/darts_overlap_hidden_ratio`` / ``timing/darts_stream_wait``, the token-streaming
counters (`darts/stream_token_*`), the peak KV-cache bytes a scorer held, the seconds the scorers spent in chunk
forwards and how long their queue of chunk forwards still took when generation ended (the chunk work not hidden).
Machine-independent figures beside them: samples released before their group ended (`darts/stream_early_samples`)
and samples first scored after generation ended (`darts/stream_late_samples`), and the load average before and after.
CPU caveat: the engine and the model actors share the same cores, so overlap on CPU trades decode speed for hidden
forwards; the ratios show what the schedule hides, not a GPU speedup.

``--model tiny-verbose``: the local demo's policy (`local.sft.ensure_verbose_model`, built and cached on first use),
which answers the `local.sft` "easy" problems at heavy-tailed lengths by itself (no extra stop tokens), so groups end at
spread times; its prompts are those problems through the chat template, scored by `bench.tasks`' exact-answer reward.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from openrlhf_darts.models.stopping import TINY_STOP_TOKENS, write_stopping_copy

def _batches(prompts: list[str], labels: list[str], batch: int):
    return [
        (["bench"] * len(prompts[i : i + batch]), prompts[i : i + batch], labels[i : i + batch], [None] * batch)
        for i in range(0, len(prompts), batch)
    ]


VARIANTS = ("plain", "stream", "tokens")
ALL_VARIANTS = ("plain", "stream", "stream_group", "tokens")


def verbose_prompts(tokenizer, num: int, seed: int) -> tuple[list[str], list[str]]:
    """The tiny-verbose model's task: `local.sft.mixed_problems` ("easy"), rendered as the fine-tuning rendered them."""
    from openrlhf_darts.local.sft import mixed_problems

    problems = mixed_problems(num, seed)
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p["prompt"]}], tokenize=False, add_generation_prompt=True
        )
        for p in problems
    ]
    return prompts, [p["answer"] for p in problems]


def run(args: argparse.Namespace) -> dict:
    import ray
    from transformers import AutoTokenizer

    from openrlhf_darts import upstream
    from openrlhf_darts.backends.cpu.args import cpu_args
    from openrlhf_darts.backends.cpu.groups import cpu_actor_group
    from openrlhf_darts.bench.rollout import REWARD_FILE, builtin_prompts
    from openrlhf_darts.bench.rollout_engine import create_engine, init_ray
    from openrlhf_darts.config import DartsConfig
    from openrlhf_darts.models import resolve_model
    from openrlhf_darts.trainer.experience_maker import DartsExperienceMaker
    from openrlhf_darts.trainer.samples_generator import DartsSamplesGenerator

    work = Path(tempfile.mkdtemp(prefix="darts_bench_streaming_"))
    load_before = os.getloadavg()
    model_stamp = None
    if args.model == "tiny-verbose":
        from openrlhf_darts.local.inputs import policy_path
        from openrlhf_darts.local.sft import _STAMP

        model_path = policy_path("tiny-verbose")
        model_stamp = {"path": model_path, **json.loads((Path(model_path) / _STAMP).read_text())}
    else:
        model_path = resolve_model(args.model)
    if args.model == "tiny":
        model_path = write_stopping_copy(model_path, work / "model", TINY_STOP_TOKENS)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    init_ray()
    engine = create_engine(model_path, args.seed, max_model_len=1024, remote_rm_url=REWARD_FILE)

    overrides = {
        "rollout.n_samples_per_prompt": args.n,
        "rollout.batch_size": args.prompts,
        "rollout.micro_batch_size": args.micro_batch_size,
    }
    cargs = cpu_args(model_path, str(work), **overrides)
    plan_flags = {"enable": True, "stream": True, "selection": "dual_end"}
    if args.candidates == "exactly_n":
        plan_flags.update(min_candidates=args.n, max_candidates=args.n)  # every candidate certain to be kept
    configs = {
        "stream": DartsConfig.from_flags(plan_flags, args.n),
        "tokens": DartsConfig.from_flags(
            {**plan_flags, "stream_tokens": True, "stream_chunk_tokens": args.chunk_tokens}, args.n
        ),
    }
    configs["plain"] = configs["stream_group"] = configs["stream"]  # same plans; only the experience making differs
    strategy = upstream.model_side_strategy(cargs)
    policy, reference = cpu_actor_group("policy"), cpu_actor_group("reference")
    ray.get(
        policy.async_init_model_from_pretrained(strategy, model_path, 10, None)
        + reference.async_init_model_from_pretrained(strategy, model_path)
    )
    kl = upstream.fixed_kl_controller(cargs.algo.kl.init_coef)
    makers = {"plain": upstream.RemoteExperienceMaker(policy, None, None, reference, kl, strategy, tokenizer)}
    for name in ("stream", "stream_group", "tokens"):
        makers[name] = DartsExperienceMaker(
            policy, None, None, reference, kl, strategy, tokenizer, config=configs[name]
        )

    variants = args.variants
    total = args.prompts * (args.steps * len(variants) + 1)
    if args.model == "tiny-verbose":
        prompts, labels = verbose_prompts(tokenizer, total, args.seed)
    else:
        prompts, labels = builtin_prompts(tokenizer, total, args.seed)
    loader = iter(_batches(prompts, labels, args.prompts))
    gen_kwargs = dict(temperature=1.0, top_p=1.0, max_new_tokens=args.max_tokens, max_len=1024)

    def one_step(variant: str) -> dict:
        generator = DartsSamplesGenerator(strategy, [next(loader)], None, tokenizer, [engine], configs[variant])
        maker = makers[variant]
        generator.group_sink = maker if variant != "plain" else None
        generator.early_release = variant != "stream_group"
        scorers = upstream.actor_handles(policy) + upstream.actor_handles(reference)
        busy_before = sum(s["busy_s"] for s in ray.get([a.chunk_cache_stats.remote() for a in scorers]))
        t0 = time.perf_counter()
        samples, *_ = generator.generate_samples(**gen_kwargs)
        t1, t1_wall = time.perf_counter(), time.time()
        # Token path: a stats call queued now runs once the chunk forwards already queued on each scorer are done, so
        # its timestamp shows how long that backlog lasted after generation (it does not block the driver).
        probe = [a.chunk_cache_stats.remote() for a in scorers]
        experiences = maker.make_experience_batch(samples)
        t2 = time.perf_counter()
        backlog = max(s["at"] for s in ray.get(probe)) - t1_wall
        busy = sum(s["busy_s"] for s in ray.get([a.chunk_cache_stats.remote() for a in scorers])) - busy_before
        record = {
            "variant": variant,
            "generation_s": t1 - t0,
            "make_experience_s": t2 - t1,
            "samples": len(samples),
            "response_tokens": float(sum(float(e.response_length.sum()) for e in experiences)),
            # Every candidate's length and cap flag, per group (machine-independent: how spread the groups' ends are).
            "candidate_lengths": [list(o.lengths) for o in generator.last_outcomes],
            "candidate_truncated": [list(o.truncated) for o in generator.last_outcomes],
        }
        if variant == "tokens":
            record["chunk_forward_s"] = busy  # summed over the scorer actors
            record["chunk_backlog_at_generation_end_s"] = backlog
        if variant != "plain":
            record.update(maker.pop_metrics())
        return record

    one_step("plain")  # warm-up: first generate and first forwards are slower
    records = []
    for step in range(args.steps):
        shift = step % len(variants)
        order = variants[shift:] + variants[:shift]
        for variant in order:
            record = one_step(variant)
            record["step"] = step
            records.append(record)
            print(json.dumps(record), flush=True)
    ray.shutdown()
    summary = summarize(args, records)
    summary["model_stamp"] = model_stamp
    summary["load_average_before"] = list(load_before)
    summary["load_average_after"] = list(os.getloadavg())
    return {"summary": summary, "steps": records}


def summarize(args: argparse.Namespace, records: list[dict]) -> dict:
    """Means per variant and the ratios against ``plain`` (measured side by side in the same run)."""
    variants = [v for v in ALL_VARIANTS if any(r["variant"] == v for r in records)]
    rows = {v: [r for r in records if r["variant"] == v] for v in variants}
    mean = lambda v, key: statistics.fmean(r[key] for r in rows[v])  # noqa: E731
    summary = {
        "model": args.model,
        "prompts": args.prompts,
        "n": args.n,
        "micro_batch_size": args.micro_batch_size,
        "max_tokens": args.max_tokens,
        "steps": args.steps,
        "candidates": args.candidates,
        "chunk_tokens": args.chunk_tokens,
        "variants": variants,
    }
    for v in variants:
        summary[f"{v}_generation_s"] = mean(v, "generation_s")
        summary[f"{v}_make_experience_s"] = mean(v, "make_experience_s")
        summary[f"{v}_total_s"] = summary[f"{v}_generation_s"] + summary[f"{v}_make_experience_s"]
        summary[f"{v}_response_tokens"] = mean(v, "response_tokens")
    for v in variants:
        if v == "plain":
            continue
        summary[f"make_experience_ratio_{v}_over_plain"] = mean(v, "make_experience_s") / mean(
            "plain", "make_experience_s"
        )
        for key in (
            "timing/darts_overlap_hidden_ratio",
            "timing/darts_stream_wait",
            "timing/darts_stream_wasted",
            "darts/stream_waves",
            "darts/stream_early_samples",
            "darts/stream_late_samples",
        ):
            summary[f"{v}_{key}"] = mean(v, key)
    if "tokens" in rows:
        for key in ("samples", "finished", "chunks", "tokens", "wasted_tokens", "released", "skipped"):
            summary[f"tokens_darts/stream_token_{key}"] = mean("tokens", f"darts/stream_token_{key}")
        summary["tokens_peak_kv_cache_bytes"] = max(r["darts/stream_token_peak_cache_bytes"] for r in rows["tokens"])
        summary["tokens_chunk_forward_s"] = mean("tokens", "chunk_forward_s")
        summary["tokens_chunk_backlog_at_generation_end_s"] = mean("tokens", "chunk_backlog_at_generation_end_s")
    return summary


def plot(summary: dict, path: Path) -> None:
    """Stacked bars per variant: generation and the make-experience time left after it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = summary["variants"]
    fig, ax = plt.subplots(figsize=(6, 0.8 + 0.6 * len(variants)))
    gen = [summary[f"{v}_generation_s"] for v in variants]
    make = [summary[f"{v}_make_experience_s"] for v in variants]
    ax.barh(variants, gen, label="generation")
    ax.barh(variants, make, left=gen, label="make experience after generation")
    ax.set_xlabel("seconds per step (mean)")
    ax.set_title(f"{summary['model']}: {summary['prompts']} prompts x n={summary['n']}, {summary['candidates']}")
    ax.invert_yaxis()
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny | tiny-verbose | smollm2 | a local HF model folder")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step (--rollout.batch_size)")
    parser.add_argument("--n", type=int, default=4, help="samples kept per prompt (--rollout.n_samples_per_prompt)")
    parser.add_argument("--micro-batch-size", type=int, default=2, help="--rollout.micro_batch_size")
    parser.add_argument("--max-tokens", type=int, default=96, help="--rollout.max_new_tokens")
    parser.add_argument("--steps", type=int, default=2, help="measured steps per variant (after one warm-up)")
    parser.add_argument("--chunk-tokens", type=int, default=32, help="--darts.stream_chunk_tokens (tokens variant)")
    parser.add_argument(
        "--candidates",
        choices=("dual_end", "exactly_n"),
        default="dual_end",
        help="dual_end: the default plan (1.25 n candidates, L=1); exactly_n: M'_i = n, every candidate streams",
    )
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, from {','.join(ALL_VARIANTS)} (plain is always run: the ratios are against it)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench_streaming")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    variants = tuple(v for v in args.variants.split(",") if v)
    unknown = sorted(set(variants) - set(ALL_VARIANTS))
    if unknown or "plain" not in variants:
        raise ValueError(f"--variants={args.variants!r}: use names from {ALL_VARIANTS}, plain included")
    args.variants = variants
    for name in ("prompts", "n", "micro_batch_size", "max_tokens", "steps", "chunk_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    report = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    plot(report["summary"], out / "streaming.png")
    print(json.dumps(report["summary"], indent=2))
    print(f"wrote {out / 'report.json'} and {out / 'streaming.png'}")
    return report


if __name__ == "__main__":
    main()
