"""Compatibility (below the data flow: makes OpenRLHF importable on CPU).

Make OpenRLHF importable on machines without flash-attn, without ever hiding a real flash-attn.

OpenRLHF 0.11.2 imports ``flash_attn.bert_padding`` and ``flash_attn.utils.distributed`` at the top of
``openrlhf/models/ring_attn_utils.py``, which ``openrlhf.models``, ``openrlhf.utils.deepspeed``, the experience maker, the
PPO trainer and ``cli.train_ppo_ray`` all pull in. flash-attn cannot be built without CUDA, so on CPU we put a folder with
pure-PyTorch versions of exactly those two modules on the import path (see ``flash_attn_fallback/``).

Why a plain folder and not an installed ``flash-attn`` distribution: transformers decides whether flash-attention-2 is usable
from the *distribution* metadata, so with a folder it keeps reporting flash-attn as absent and never routes a model to
kernels that do not exist. Why ``sys.path.append`` and not ``insert(0, ...)``: a real install that appears later (a GPU
machine) must always win, so the fallback can only be found when nothing else is.

Ray actors are separate processes that never ran :func:`install`; :func:`ray_runtime_env` carries the same path to them
through ``PYTHONPATH``. This module imports only the standard library, so calling it before torch or OpenRLHF costs nothing.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_FALLBACK_DIR = Path(__file__).resolve().parent / "flash_attn_fallback"
# The folder that holds the `openrlhf_darts` package: the repository root for an editable install.
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
_logged_active = False

__all__ = ["fallback_path", "install", "is_fallback_module", "ray_runtime_env"]


def fallback_path() -> str:
    """The folder to put on the import path; it holds the fallback's top-level ``flash_attn`` package."""
    return str(_FALLBACK_DIR)


def _is_ours(origin: str | None) -> bool:
    if not origin:
        return False
    return Path(origin).resolve().is_relative_to(_FALLBACK_DIR)


def is_fallback_module(module: Any) -> bool:
    """True when ``module`` (e.g. an imported ``flash_attn``) is this CPU fallback rather than the real package."""
    return _is_ours(getattr(module, "__file__", None))


def _real_flash_attn_present() -> bool:
    """Whether something other than our fallback already answers ``import flash_attn``."""
    loaded = sys.modules.get("flash_attn")
    if loaded is not None:
        # Also covers test stubs injected into sys.modules, which may have no __spec__ (find_spec would raise on them).
        return not is_fallback_module(loaded)
    spec = importlib.util.find_spec("flash_attn")
    return spec is not None and not _is_ours(spec.origin)


def install() -> bool:
    """Put the CPU fallback at the end of ``sys.path`` unless a real flash_attn is importable.

    Returns True when the fallback is (now) what ``import flash_attn`` resolves to, False when a real flash_attn is used.
    Idempotent: the path is appended once and the "fallback active" message is logged once per process.
    """
    global _logged_active
    if _real_flash_attn_present():
        return False
    path = fallback_path()
    if path not in sys.path:
        sys.path.append(path)
        # A finder that already scanned sys.path must see the new entry.
        importlib.invalidate_caches()
    if not _logged_active:
        _logged_active = True
        logger.info("flash_attn not installed: using the pure-PyTorch CPU fallback from %s", path)
    return True


def ray_runtime_env(env: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Ray ``runtime_env`` whose workers can import ``openrlhf_darts`` and, on CPU, the flash_attn fallback.

    ``env`` is copied, never mutated. Its ``env_vars["PYTHONPATH"]`` (or, if absent, this process's ``PYTHONPATH``) is kept
    first, because Ray's ``env_vars`` *replace* a variable in the worker rather than extend it. After it come the package
    root and, only when :func:`install` found no real flash_attn, the fallback folder. ``VLLM_CPU_OMP_THREADS_BIND``
    defaults to ``nobind`` so vLLM engines do not pin OpenMP threads to cores that Ray and the other processes share; an
    explicit value in ``env`` wins.
    """
    runtime_env = copy.deepcopy(env) if env else {}
    env_vars = dict(runtime_env.get("env_vars") or {})
    existing = env_vars.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    entries = [entry for entry in existing.split(os.pathsep) if entry]
    wanted = [str(_PACKAGE_ROOT)]
    if install():
        wanted.append(fallback_path())
    entries += [entry for entry in wanted if entry not in entries]
    env_vars["PYTHONPATH"] = os.pathsep.join(entries)
    env_vars.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    runtime_env["env_vars"] = env_vars
    return runtime_env
