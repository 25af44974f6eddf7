"""Simulator (outside the data flow: replays plan -> generation -> selection through the cost model).

Cluster-scale rollout simulator: replays candidate-length traces through the cost model (DARTS_SPEC.md §3(e)).

    python -m openrlhf_darts.sim --trace 7b-like --trace 14b-like --trace 32b-like --engines 64 --prompts 512 --n 8

- ``traces``: where lengths come from: a rollout benchmark's ``report.json`` (recorded, bootstrapped per prompt) or a
  synthetic heavy-tailed family (``7b-like``, ``14b-like``, ``32b-like``; synthetic, NOT from the paper);
- ``latency``: the per-token-latency table: a measured profile file, or a named synthetic table;
- ``replay``: plans per variant (baseline, uniform dual-end, uniform shortest-only, adaptive), least-loaded engine
  assignment as the samples generator does it, and ``core.cost_model`` per engine; the step waits for the slowest
  engine.

Standard library only (like ``core``), so it runs, and is tested, without torch, Ray or vLLM.
"""
