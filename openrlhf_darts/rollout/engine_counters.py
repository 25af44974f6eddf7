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

Reading them through `vllm.v1.metrics.reader.get_metrics_snapshot` (vLLM's public in-process metrics API) alters
nothing in generation, so the baseline's path stays upstream's. Both counts are cumulative since the engine started;
callers take differences around the phase they measure.
"""

from __future__ import annotations

ITERATIONS_METRIC = "vllm:iteration_tokens_total"
FINISHED_METRIC = "vllm:request_success"


def read_engine_counters() -> dict[str, int]:
    """`{"iterations": ..., "finished_requests": ...}` of the vLLM engine in this process, cumulative.

    Raises RuntimeError when vLLM records no statistics here (an engine built with `disable_log_stats=True`, or no
    engine in this process): a silent zero would read as "no work".
    """
    from vllm.v1.metrics.reader import Counter, Histogram, get_metrics_snapshot

    iterations = finished = None
    for metric in get_metrics_snapshot():
        if metric.name == ITERATIONS_METRIC and isinstance(metric, Histogram):
            iterations = (iterations or 0) + metric.count
        elif metric.name == FINISHED_METRIC and isinstance(metric, Counter):
            finished = (finished or 0) + metric.value
    if iterations is None or finished is None:
        raise RuntimeError(
            f"vLLM records no {ITERATIONS_METRIC!r} / {FINISHED_METRIC!r} in this process; the engine counters need "
            "vLLM's statistics: do not build the engine with disable_log_stats=True"
        )
    return {"iterations": int(iterations), "finished_requests": int(finished)}
