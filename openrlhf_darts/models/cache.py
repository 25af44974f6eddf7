"""Where local models are cached (its own module so that ``models.smollm2`` and ``models.tiny`` need not import the
package ``__init__``, which imports them back)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> str:
    """``$OPENRLHF_DARTS_CACHE`` when set (CI points it at a shared folder), else ``~/.cache/openrlhf_darts``."""
    return str(Path(os.environ.get("OPENRLHF_DARTS_CACHE") or "~/.cache/openrlhf_darts").expanduser())
