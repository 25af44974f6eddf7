"""`python -m openrlhf_darts.cli.train_ppo_ray`: upstream's `openrlhf.cli.train_ppo_ray` plus `--darts.*` (and the
`--tail_batching.*` comparison arm).

Switching a run to DARTS means changing the module and adding `--darts.*` lines; every other flag is upstream's,
parsed by upstream's own parser. How it works (spec OPENRLHF_SEAMS.md §10):

1. `upstream.darts_flags_in_upstream_cli` adds the DARTS and tail-batching groups to upstream's parser (so `--help`
   lists them) and hands the hierarchized args to `_on_parsed` before upstream validates them or starts Ray.
2. `_on_parsed` builds the validated `DartsConfig` and `TailBatchingConfig` (a bad value raises `ValueError` here,
   before any actor exists) and, only with `--darts.enable` or `--tail_batching.enable` (the comparison arm, which
   refuses DARTS), rebinds the two Ray classes upstream's `train()` instantiates itself. Without either nothing is
   rebound, so the run is exactly upstream's. (`--darts.stream_tokens` also needs chunk-forward model actors;
   upstream's script binds those names on import, so `main` rebinds them before running it.)
3. `runpy` runs upstream's script as `__main__`; `args.darts` travels to the trainer and model actors inside
   `strategy.args`.

`OPENRLHF_DARTS_PARSE_ONLY=1` stops after the validation of step 2, before any rebinding: the DARTS and tail-batching
configs and the parsed upstream args are printed as one JSON object and the process exits 0. The tests parse every
example script's full command this way, without starting Ray.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from types import SimpleNamespace

from openrlhf_darts.config import DartsConfig
from openrlhf_darts.tail_batching import TailBatchingConfig

PARSE_ONLY_ENV = "OPENRLHF_DARTS_PARSE_ONLY"
UPSTREAM_MODULE = "openrlhf.cli.train_ppo_ray"
CHUNKED_ACTOR_FLAGS = ("--darts.enable", "--darts.stream_tokens")  # spelled out: they are read before parsing


def _to_plain(value):
    """A hierarchized namespace as nested dicts, for the parse-only JSON."""
    if isinstance(value, SimpleNamespace):
        return {key: _to_plain(item) for key, item in vars(value).items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(item) for item in value]
    return value


def _wants_chunked_actors(argv: list[str]) -> bool:
    return all(flag in argv for flag in CHUNKED_ACTOR_FLAGS)


def _on_parsed(args: SimpleNamespace) -> None:
    """Validate the DARTS and tail-batching flags against upstream's, then wire our classes in (only with
    --darts.enable or --tail_batching.enable)."""
    config = DartsConfig.from_args(args)
    tail_batching = TailBatchingConfig.from_args(args)
    if config.enable and config.stream_tokens and not _wants_chunked_actors(sys.argv[1:]):
        raise ValueError(
            "--darts.stream_tokens: spell out --darts.enable and --darts.stream_tokens in full on the command line; "
            "the chunk-forward model actors the token path needs are installed before parsing, by those exact names"
        )
    if os.environ.get(PARSE_ONLY_ENV) == "1":
        plain = {"darts": config.to_dict(), "tail_batching": tail_batching.to_dict(), "args": _to_plain(args)}
        print(json.dumps(plain, default=str))
        raise SystemExit(0)
    if not (config.enable or tail_batching.enable):
        return
    from openrlhf_darts import upstream
    from openrlhf_darts.rollout.rollout_actor import DartsRolloutRayActor
    from openrlhf_darts.trainer.ppo_trainer import DartsPPOTrainer

    upstream.install_driver_patches(DartsPPOTrainer, DartsRolloutRayActor)
    if tail_batching.enable:
        # The DARTS trainer and engine actor carry the tail-batching generator and the engine-side group abort.
        print(f"[openrlhf_darts] tail batching enabled: {json.dumps(tail_batching.to_dict())}", flush=True)
    else:
        print(f"[openrlhf_darts] DARTS enabled: {json.dumps(config.to_dict())}", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Run upstream's `train_ppo_ray` with the DARTS flags; `argv` defaults to `sys.argv[1:]`."""
    from openrlhf_darts import upstream

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    if _wants_chunked_actors(sys.argv[1:]):
        # The token path needs chunk-forward model actors. Upstream's script binds the model actor classes when it is
        # imported, before it parses anything, so they are rebound in their defining modules now (validation follows).
        upstream.install_chunked_model_actors()
    with upstream.darts_flags_in_upstream_cli(_on_parsed):
        runpy.run_module(UPSTREAM_MODULE, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
