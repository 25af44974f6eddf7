"""Benchmarks (outside the data flow: they drive it, on one real engine or the local mode, and report).

Benchmarks that print and save their figures (never timed tests; STYLE.md test tiers).

- ``rollout``: OpenRLHF baseline vs DARTS shortest-only vs DARTS dual-end vs tail batching on one real vLLM engine (the
  variants and CLI; ``rollout_engine`` starts the engine and dispatches a variant, ``rollout_report`` computes the
  figures, the table and the plot);
- ``profile_latency``: decode-step latency against running sequences, written as a ``PerTokenLatency`` profile;
- ``validate_sim``: the simulator's rollout time against a measured one;
- ``tasks``: built-in arithmetic word problems and their exact-answer reward, and the ``--task`` selection;
- ``gym_tasks``: reasoning-gym datasets by name, with the dataset's own scorer as the reward.

Importing this package imports nothing heavy; each script loads Ray and vLLM when it runs.
"""
