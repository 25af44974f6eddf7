"""The driver side (data-flow steps: prompts -> plan -> dispatch; the streamed half of scoring; handing samples to
upstream's advantages and training).

- ``planner``: per-prompt plans (M'_i candidates, K/L split) from the length statistics (``core``);
- ``samples_generator``: ``DartsSamplesGenerator``, dispatching groups to engines and collecting kept samples;
- ``experience_maker`` and ``token_stream``: forwards of released samples while vLLM still generates, and token
  chunks sent to the scorers (``scoring/``);
- ``tail_batching``: the comparison arm's samples generator;
- ``ppo_trainer``: ``DartsPPOTrainer``, swapping those collaborators into upstream's trainer.
"""
