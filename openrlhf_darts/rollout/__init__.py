"""The engine side (data-flow steps: redundant generation/abort -> selection, inside each vLLM engine actor).

- ``rollout_actor``: ``DartsRolloutActor``, upstream's engine actor plus ``generate_group``: M'_i candidates per
  prompt, local finish tracking, early abort and dual-end selection (``core.selection``, ``core.early_stop``);
- ``tail_groups``: the tail-batching comparison arm's engine-side groups;
- ``engine_stream``: the engine's ``AsyncLLM`` wrapped so both kinds of group see their requests decode;
- ``engine_counters``: vLLM's own counters (iterations, finishes, tokens) read inside the engine.
"""
