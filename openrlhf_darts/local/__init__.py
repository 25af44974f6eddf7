"""Local mode (the whole data flow, prompts to training, on one CPU machine).

Local mode: OpenRLHF's real GRPO loop, with or without DARTS, on one CPU machine.

- `train`: one run. Starts a local Ray cluster, then runs upstream's own `openrlhf.cli.train_ppo_ray` (parser,
  validation, `train()`, `PPOTrainer.fit`) with the DARTS engine actor and trainer and the CPU model actors bound in.
- `sft`: the verbosity task's starting model, a tiny Qwen2 fine-tuned for a minute or two to answer easy arithmetic
  word problems (the "easy" mix of `sft.DIFFICULTIES`, also the RL prompts' default) with reasoning of random length,
  cached like the other local models.
- `compare`: the README's main command; baseline and DARTS with identical seeds, per-step tables, a plot and a JSON.

Importing this package imports nothing heavy.
"""
