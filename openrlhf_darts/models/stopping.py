"""Make the random tiny model stop at varied lengths: a few ordinary token ids act as stop tokens.

The tiny model's weights are random and it rarely emits its EOS token, so without help every request runs to the cap
and a group has no length spread. Each ordinary token id made a stop token ends a request with probability about
1/vocabulary per step (the tiny vocabulary is 1,024: 16 ids stop about 1.6% of steps, 40 about 4%). Two ways to use
the same ids, `stop_token_ids(vocab_size, count)` (the last `count` ids of the vocabulary):

- per request: `SamplingParams(stop_token_ids=...)` (the rollout benchmark, the engine tests);
- per model: `write_stopping_copy` writes a copy of the model whose `generation_config.json` lists them as extra EOS
  ids; vLLM stops every request on them, upstream's included (the streaming benchmark, the trainer tests).

Real models (SmolLM2, a local folder) need neither. Standard library only.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

TINY_STOP_TOKENS = 16  # the benchmarks' count for the tiny model (the contract tests use 40)


def stop_token_ids(vocab_size: int, count: int) -> list[int]:
    """The `count` last token ids of a vocabulary of `vocab_size` (ordinary tokens in the tiny model's); [] for 0."""
    if count < 0 or count > vocab_size:
        raise ValueError(f"count={count} stop tokens out of a vocabulary of {vocab_size}; pass 0 to {vocab_size}")
    return list(range(vocab_size - count, vocab_size))


def write_stopping_copy(model_path: str | os.PathLike, out_path: str | os.PathLike, count: int) -> str:
    """Copy the model folder to `out_path` with `count` more EOS ids in its generation_config (`stop_token_ids` of its
    `config.json` vocabulary); returns the copy's path."""
    out = Path(out_path)
    shutil.copytree(model_path, out)
    config_file = out / "generation_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    vocab = json.loads((out / "config.json").read_text())["vocab_size"]
    eos = config.get("eos_token_id")
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    config["eos_token_id"] = eos + stop_token_ids(vocab, count)
    config_file.write_text(json.dumps(config))
    return str(out)
