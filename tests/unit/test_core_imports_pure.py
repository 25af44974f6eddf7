"""House rule 1: every core module imports with torch, Ray, vLLM, OpenRLHF, numpy and DeepSpeed unimportable."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("torch", "ray", "vllm", "openrlhf", "numpy", "deepspeed")
EXPECTED_MODULES = {
    "types", "selection", "allocation", "length_fit", "length_stats", "cost_model", "budget", "tail_batching",
}  # fmt: skip

SCRIPT = textwrap.dedent("""
    import importlib, importlib.abc, json, pkgutil, sys

    BLOCKED = set(sys.argv[1].split(","))

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            # Match the top-level name exactly: "openrlhf" is blocked, "openrlhf_darts" is not.
            if name.partition(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in the pure-core import test")
            return None

    sys.meta_path.insert(0, Blocker())
    for name in BLOCKED:
        sys.modules.pop(name, None)

    # Prove the blocker works, so the test below cannot pass vacuously.
    blocker_works = True
    for name in BLOCKED:
        try:
            importlib.import_module(name)
            blocker_works = False
        except ImportError:
            pass

    import openrlhf_darts
    import openrlhf_darts.core

    imported = []
    for info in pkgutil.walk_packages(openrlhf_darts.core.__path__, prefix="openrlhf_darts.core."):
        importlib.import_module(info.name)
        imported.append(info.name)
    leaked = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
    print(json.dumps({"blocker_works": blocker_works, "imported": imported, "leaked": leaked}))
    """)


def test_every_core_module_imports_without_heavy_packages():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, ",".join(BLOCKED)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"import failed:\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["blocker_works"], "the meta-path blocker let a blocked package import"
    assert report["leaked"] == []
    imported = {name.rsplit(".", 1)[-1] for name in report["imported"]}
    # Discovery must actually find the modules; an empty walk would make this test vacuous.
    assert EXPECTED_MODULES <= imported, f"pkgutil found {sorted(imported)}"
