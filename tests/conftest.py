"""Fixtures shared by every test folder.

Unit tests must stay importable without torch, so this file imports only the standard library and pytest at module level;
anything heavy is imported inside the fixture that needs it.
"""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Folder of the tiny random Qwen2 chat model (seed 0), built once per test run.

    Built under ``$OPENRLHF_DARTS_CACHE/tiny-qwen2`` when that variable is set, so repeated local runs and CI steps reuse
    one build (the builder skips a folder stamped with the same seed); otherwise into a fresh pytest temporary folder.
    """
    from openrlhf_darts.models import TINY_DIR_NAME, build_tiny_model

    cache = os.environ.get("OPENRLHF_DARTS_CACHE")
    root = Path(cache).expanduser() if cache else tmp_path_factory.mktemp("models")
    return build_tiny_model(root / TINY_DIR_NAME, seed=0)


@pytest.fixture(scope="session")
def flash_attn_fallback() -> bool:
    """Make ``import openrlhf.models`` work in this process: installs the flash_attn CPU fallback unless a real flash_attn
    is present. Returns whether the fallback is active."""
    from openrlhf_darts import compat

    return compat.install()
