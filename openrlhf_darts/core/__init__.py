"""The DARTS algorithm core, standard library only (DARTS_SPEC.md §3; STYLE.md house rule 1). Data-flow steps: plan,
redundant generation/abort, selection (the pure rules behind `trainer/` and `rollout/`).

Modules, in data-flow order: ``types`` (records), ``length_stats`` (§3(d) 1-2), ``cost_model`` and ``budget``
(§3(e)), ``allocation`` (§3(d) 3-4, §3(f)), ``dual_end`` (§3(b)), ``selection`` (§3(b), (c)), ``early_stop`` (§3(c))
and ``streaming`` (§3(g)); ``percentile`` is the one nearest-rank percentile of every length figure. Nothing here
imports torch, Ray, vLLM or OpenRLHF, and this ``__init__`` imports no submodule, so importing one function costs only
that module.
"""
