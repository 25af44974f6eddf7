"""The engine's own counts of its work, read from vLLM's metrics inside the engine actor's process.

Why: the time of a rollout on one engine follows its *iterations* (scheduler steps), not the longest request. The two
agree only while every request is admitted at once: the CPU engine admits `max_num_seqs` = 128 requests, and 16
prompts x 12 candidates is 192, so later candidates wait for free slots and the rollout takes more iterations than
its longest request has tokens.

Where the counts come from: vLLM 0.29's `AsyncLLM` records statistics in the process that owns it (the engine actor)
unless it was built with `disable_log_stats` (OpenRLHF does not set it, so its default, False, holds). For every
message the engine core sends, its output handler calls the stat loggers, and the Prometheus logger that is always
among them observes:

- `vllm:iteration_tokens_total` (histogram) once per engine step that produced at least one request output, i.e. that
  sampled a token for some request: its count is the number of such iterations. A request of k tokens that runs alone
  takes k of them (the first token comes with the prefill step). Steps that sample nothing are not counted: the
  bookkeeping step that only frees finished requests, and a step that only prefills part of a long prompt.
- `vllm:request_success` (counter per finish reason) once per request that finished in the engine (stop, length;
  not requests the client aborted).
- `vllm:generation_tokens` (counter) for every token the front end received for a request, aborted ones included up
  to their abort.

Reading them through `vllm.v1.metrics.reader.get_metrics_snapshot` (vLLM's public in-process metrics API) alters
nothing in generation, so the baseline's path stays upstream's. Both counts are cumulative since the engine started;
callers take differences around the phase they measure.
"""

from __future__ import annotations

ITERATIONS_METRIC = "vllm:iteration_tokens_total"
FINISHED_METRIC = "vllm:request_success"
TOKENS_METRIC = "vllm:generation_tokens"


def read_engine_counters() -> dict[str, int]:
    """The counts of the vLLM engine in this process, cumulative: `iterations`, `finished_requests`,
    `generation_tokens`, and `finished_<reason>` per finish reason vLLM has seen (stop, length, ...).

    Raises RuntimeError when vLLM records no statistics here (an engine built with `disable_log_stats=True`, or no
    engine in this process): a silent zero would read as "no work".
    """
    from vllm.v1.metrics.reader import Counter, Histogram, get_metrics_snapshot

    iterations = finished = None
    counts = {"generation_tokens": 0.0}
    for metric in get_metrics_snapshot():
        if metric.name == ITERATIONS_METRIC and isinstance(metric, Histogram):
            iterations = (iterations or 0) + metric.count
        elif metric.name == FINISHED_METRIC and isinstance(metric, Counter):
            finished = (finished or 0) + metric.value
            key = f"finished_{metric.labels['finished_reason']}"
            counts[key] = counts.get(key, 0.0) + metric.value
        elif metric.name == TOKENS_METRIC and isinstance(metric, Counter):
            counts["generation_tokens"] += metric.value
    if iterations is None or finished is None:
        raise RuntimeError(
            f"vLLM records no {ITERATIONS_METRIC!r} / {FINISHED_METRIC!r} in this process; the engine counters need "
            "vLLM's statistics: do not build the engine with disable_log_stats=True"
        )
    counts.update(iterations=iterations, finished_requests=finished)
    return {key: int(value) for key, value in counts.items()}


def engine_counters(engine) -> dict[str, int]:
    """`read_engine_counters()` of a running engine actor, read from outside it (driver, test) in one Ray call."""
    import ray

    return ray.get(engine.__ray_call__.remote(_read_in_actor))


def _read_in_actor(actor) -> dict[str, int]:
    return read_engine_counters()
