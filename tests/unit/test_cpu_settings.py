"""CPU-only settings (backends/cpu/settings.py): read from the environment, validated, errors name the variable and
its valid range. The module is standard library only, so this is a unit test."""

import json
import subprocess
import sys

import pytest

from openrlhf_darts.backends.cpu import settings

pytestmark = [pytest.mark.unit]


def test_defaults_when_unset(monkeypatch):
    for name in (settings.KV_CACHE_BYTES_ENV, settings.MAX_NUM_SEQS_ENV, settings.THREADS_ENV):
        monkeypatch.delenv(name, raising=False)
    # 256 MiB = 256 * 2**20 = 268435456 bytes; max_num_seqs absent, so vLLM keeps its own default.
    assert settings.engine_kwargs() == {"kv_cache_memory_bytes": 268435456}
    assert settings.model_actor_threads() == 1


def test_values_are_parsed(monkeypatch):
    monkeypatch.setenv(settings.KV_CACHE_BYTES_ENV, " 1048576 ")  # exactly the 1 MiB minimum; spaces are stripped
    monkeypatch.setenv(settings.MAX_NUM_SEQS_ENV, "512")
    monkeypatch.setenv(settings.THREADS_ENV, "2")
    assert settings.engine_kwargs() == {"kv_cache_memory_bytes": 1048576, "max_num_seqs": 512}
    assert settings.model_actor_threads() == 2


@pytest.mark.parametrize(
    "name, raw, message",
    [
        (
            "OPENRLHF_DARTS_CPU_KV_CACHE_BYTES",
            "256MiB",
            "OPENRLHF_DARTS_CPU_KV_CACHE_BYTES='256MiB' is not an integer; set an integer >= 1048576, or unset it "
            "for the default 268435456",
        ),
        (
            "OPENRLHF_DARTS_CPU_KV_CACHE_BYTES",
            "1048575",
            "OPENRLHF_DARTS_CPU_KV_CACHE_BYTES=1048575 is out of range; set an integer >= 1048576",
        ),
        (
            "OPENRLHF_DARTS_CPU_MAX_NUM_SEQS",
            "0",
            "OPENRLHF_DARTS_CPU_MAX_NUM_SEQS=0 is out of range; set an integer >= 1, or unset it",
        ),
        ("OPENRLHF_DARTS_CPU_MAX_NUM_SEQS", "1.5", "OPENRLHF_DARTS_CPU_MAX_NUM_SEQS='1.5' is not an integer"),
        (
            "OPENRLHF_DARTS_CPU_THREADS",
            "-2",
            "OPENRLHF_DARTS_CPU_THREADS=-2 is out of range; set an integer >= 1, or unset it for the default 1",
        ),
    ],
)
def test_bad_values_name_the_variable_and_the_range(monkeypatch, name, raw, message):
    monkeypatch.setenv(name, raw)
    read = settings.model_actor_threads if name == settings.THREADS_ENV else settings.engine_kwargs
    with pytest.raises(ValueError) as error:
        read()
    assert message in str(error.value)


def test_settings_module_loads_no_heavy_package():
    code = (
        "import json, sys; import openrlhf_darts.backends.cpu.settings; "
        "heavy = ('torch', 'ray', 'vllm', 'openrlhf', 'transformers'); "
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True).stdout)
    assert loaded == []


def test_only_backends_cpu_reads_the_cpu_variables():
    """The CPU variables are read in settings.py alone (the benchmarks name them only to set them for their actors)."""
    from pathlib import Path

    import openrlhf_darts

    root = Path(openrlhf_darts.__file__).parent
    readers = sorted(
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "OPENRLHF_DARTS_CPU_" in path.read_text() and path.name != "settings.py"
    )
    assert readers == [], readers
