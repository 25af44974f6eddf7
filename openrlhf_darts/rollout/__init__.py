"""The engine side (data-flow steps: redundant generation/abort -> selection, inside each vLLM engine actor).

- ``rollout_actor``: ``DartsRolloutActor``, upstream's engine actor plus ``generate_group``: M'_i candidates per
  prompt on upstream's generate path, finishes and progress counted in the actor;
- ``group_run``: ``GroupRun``, one prompt's candidates: verdicts, early abort and dual-end selection
  (``core.early_stop``), the token-streaming outbox and the early release of final kept samples;
- ``tail_groups``: the tail-batching comparison arm's engine-side groups;
- ``engine_stream``: the engine's ``AsyncLLM`` wrapped so both kinds of group see their requests decode;
- ``engine_counters``: vLLM's own counters (iterations, finishes, tokens) read inside the engine.
"""
