"""Scoring (data-flow step: selection -> **scoring** -> upstream advantages): backend-neutral token-level streaming on
the scorer side (spec §3(g)).

- ``chunk_cache``: the per-sample KV-cache ``ChunkCache``, its model steps (``causal_lm_step``, ``critic_step``), the
  live-cache limit (``max_live_caches``, ``--darts.max_live_caches``) and ``ChunkScoringMixin``, the remote chunk
  methods both model-actor backends (``backends/cpu/``, ``backends/gpu_chunked.py``) add to their actors.

The driver side that feeds these caches is ``trainer/token_stream.py``. Importing this package imports nothing heavy;
``chunk_cache`` imports torch.
"""
