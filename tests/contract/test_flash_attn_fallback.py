"""Contract of the flash_attn CPU fallback (CPU_ENV.md, "The flash_attn import") and of its installation.

The padding helpers are checked on the hand-computed case from CPU_ENV.md, with gradients written out by hand; install()
is checked in fresh interpreters, because sys.path and sys.modules of the test process are shared with other tests.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.contract, pytest.mark.timeout(300)]

torch = pytest.importorskip("torch")

from openrlhf_darts import compat  # noqa: E402  (after the torch skip, so a torch-less run reports a skip)

MASK = [[1, 1, 1, 0], [1, 1, 0, 0]]

# OpenRLHF modules that import flash_attn directly or through openrlhf.models.ring_attn_utils. train_ppo_ray keeps its
# parser under `if __name__ == "__main__":`, so importing it as a module runs only its imports and definitions.
OPENRLHF_MODULES = (
    "openrlhf.models",
    "openrlhf.models.ring_attn_utils",
    "openrlhf.utils.deepspeed",
    "openrlhf.trainer.ppo_utils.experience_maker",
    "openrlhf.trainer.ppo_trainer",
    "openrlhf.trainer.ray.vllm_engine",
    "openrlhf.cli.train_ppo_ray",
)


@pytest.fixture(scope="module")
def bert_padding(flash_attn_fallback: bool):
    from flash_attn import bert_padding

    return bert_padding


def _python(code: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter of this venv; the last stdout line is expected to be JSON."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def _last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- bert_padding: values ---


def test_unpad_input_hand_computed_case(bert_padding) -> None:
    # x[b, s] = 4*b + s, so every position's flat index in the (batch * seqlen) = 2 * 4 grid is its own value.
    x = torch.arange(8, dtype=torch.float32).reshape(2, 4, 1)
    hidden, indices, cu_seqlens, max_seqlen, seqused = bert_padding.unpad_input(x, torch.tensor(MASK))

    # Row 0 keeps s = 0, 1, 2 -> flat 0, 1, 2; row 1 keeps s = 0, 1 -> flat 4 + 0, 4 + 1 = 4, 5.
    assert indices.tolist() == [0, 1, 2, 4, 5] and indices.dtype == torch.int64
    assert hidden.squeeze(-1).tolist() == [0.0, 1.0, 2.0, 4.0, 5.0]
    # Per-row counts 3 and 2; cumulative with a leading 0: [0, 3, 3 + 2] = [0, 3, 5]; the longest row has 3.
    assert seqused.tolist() == [3, 2] and seqused.dtype == torch.int32
    assert cu_seqlens.tolist() == [0, 3, 5] and cu_seqlens.dtype == torch.int32
    assert max_seqlen == 3 and type(max_seqlen) is int


def test_unpad_input_accepts_bool_mask_and_trailing_dims(bert_padding) -> None:
    x = torch.randn(2, 4, 3, 2)
    hidden, indices, cu_seqlens, max_seqlen, _ = bert_padding.unpad_input(x, torch.tensor(MASK, dtype=torch.bool))
    assert hidden.shape == (5, 3, 2)  # nnz = 3 + 2 = 5 rows, the trailing (3, 2) kept
    assert indices.tolist() == [0, 1, 2, 4, 5] and cu_seqlens.tolist() == [0, 3, 5] and max_seqlen == 3
    torch.testing.assert_close(hidden[3], x[1, 0])  # the 4th kept row is batch 1, position 0


def test_pad_input_inverts_unpad_and_zeroes_masked_positions(bert_padding) -> None:
    x = torch.arange(8, dtype=torch.float32).reshape(2, 4, 1) + 1.0  # +1 so a zeroed position cannot pass by accident
    hidden, indices, *_ = bert_padding.unpad_input(x, torch.tensor(MASK))
    padded = bert_padding.pad_input(hidden, indices, 2, 4)
    assert padded.shape == (2, 4, 1)
    # x = [[1, 2, 3, 4], [5, 6, 7, 8]] with the masked-out positions (0, 3), (1, 2), (1, 3) set to zero.
    assert padded.squeeze(-1).tolist() == [[1.0, 2.0, 3.0, 0.0], [5.0, 6.0, 0.0, 0.0]]


def test_unused_mask_is_rejected(bert_padding) -> None:
    x = torch.zeros(2, 4, 1)
    with pytest.raises(ValueError, match="unused_mask"):
        bert_padding.unpad_input(x, torch.tensor(MASK), unused_mask=torch.zeros(2, 4, dtype=torch.int64))


def test_rearrange_is_einops(bert_padding) -> None:
    import einops

    assert bert_padding.rearrange is einops.rearrange


# --- bert_padding: gradients ---


def test_index_first_axis_gradient_goes_to_picked_rows_only(bert_padding) -> None:
    x = torch.zeros(5, 2, requires_grad=True)
    indices = torch.tensor([4, 1, 2])
    weights = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    out = bert_padding.index_first_axis(x, indices)
    assert out.shape == (3, 2)
    (out * weights).sum().backward()
    # d/dx[indices[k]] of sum(out * w) = w[k]: x[4] <- w[0], x[1] <- w[1], x[2] <- w[2]; rows 0 and 3 were not picked.
    expected = torch.tensor([[0.0, 0.0], [3.0, 4.0], [5.0, 6.0], [0.0, 0.0], [1.0, 2.0]])
    torch.testing.assert_close(x.grad, expected)
    assert torch.autograd.gradcheck(
        lambda t: bert_padding.index_first_axis(t, indices), torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    )


def test_pad_input_gradient(bert_padding) -> None:
    indices = torch.tensor([0, 1, 2, 4, 5])
    hidden = torch.zeros(5, 1, requires_grad=True)
    # w[b, s] = 10 * b + s, so the gradient of row k reads off its (b, s).
    weights = torch.tensor([[0.0, 1.0, 2.0, 3.0], [10.0, 11.0, 12.0, 13.0]]).unsqueeze(-1)
    (bert_padding.pad_input(hidden, indices, 2, 4) * weights).sum().backward()
    # Row k lands at flat index indices[k] = (b, s) = (0,0), (0,1), (0,2), (1,0), (1,1) -> w = 0, 1, 2, 10, 11.
    assert hidden.grad.squeeze(-1).tolist() == [0.0, 1.0, 2.0, 10.0, 11.0]
    assert torch.autograd.gradcheck(
        lambda t: bert_padding.pad_input(t, indices, 2, 4), torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    )


# --- utils.distributed.all_gather ---


def test_all_gather_without_process_group_raises(flash_attn_fallback: bool) -> None:
    from flash_attn.utils.distributed import all_gather

    if not compat.is_fallback_module(sys.modules["flash_attn"]):
        pytest.skip("a real flash_attn is installed; its all_gather is not ours to test")
    import torch.distributed as dist

    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        all_gather(torch.ones(2), None)


_ALL_GATHER_WORKER = """
import json, sys
import torch
import torch.distributed as dist
from openrlhf_darts import compat

compat.install()
from flash_attn.utils.distributed import all_gather

rank, world, init_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
x = torch.full((2, 3), float(rank), requires_grad=True)
out = all_gather(x, None)
weights = torch.arange(out.numel(), dtype=torch.float32).reshape(out.shape)
(out * weights).sum().backward()
print(json.dumps({"out": out.tolist(), "grad": x.grad.tolist()}))
dist.destroy_process_group()
"""


def test_all_gather_two_gloo_ranks(tmp_path: Path, flash_attn_fallback: bool) -> None:
    if not flash_attn_fallback:
        pytest.skip("a real flash_attn is installed; its all_gather needs CUDA")
    world, init_file = 2, tmp_path / "dist_init"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _ALL_GATHER_WORKER, str(rank), str(world), str(init_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world)
    ]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, stderr[-4000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))

    # Rank r contributes a (2, 3) block of r; concatenated along dim 0 in rank order: two rows of 0, then two rows of 1.
    expected_out = [[0.0] * 3, [0.0] * 3, [1.0] * 3, [1.0] * 3]
    # Every rank's loss is sum(out * w) with w = arange(12).reshape(4, 3), so d(total loss)/d(x on rank r) sums the
    # same w-slice over both ranks: 2 * w[2r : 2r + 2]. Rank 0: 2 * [[0, 1, 2], [3, 4, 5]]; rank 1: 2 * [[6..8], [9..11]].
    expected_grad = [[[0.0, 2.0, 4.0], [6.0, 8.0, 10.0]], [[12.0, 14.0, 16.0], [18.0, 20.0, 22.0]]]
    for rank, result in enumerate(results):
        assert result["out"] == expected_out
        assert result["grad"] == expected_grad[rank]


# --- install(), fallback_path(), ray_runtime_env() ---


def test_compat_import_is_light_and_install_appends_once() -> None:
    result = _last_json(_python("""
            import importlib.util, json, logging, sys
            records = []
            logging.basicConfig(level=logging.INFO)
            logging.getLogger("openrlhf_darts.compat").addHandler(type("H", (logging.Handler,), {"emit": lambda s, r: records.append(r)})())
            from openrlhf_darts import compat
            light = "torch" not in sys.modules
            real_before = importlib.util.find_spec("flash_attn") is not None
            first, second = compat.install(), compat.install()
            spec = importlib.util.find_spec("flash_attn")
            print(json.dumps({
                "light": light, "real_before": real_before, "first": first, "second": second,
                "count": sys.path.count(compat.fallback_path()), "last": sys.path[-1] == compat.fallback_path(),
                "origin": spec.origin if spec else None, "logs": len(records), "still_light": "torch" not in sys.modules,
            }))
            """))
    assert (
        result["light"] and result["still_light"]
    ), "importing or installing the compat package must not import torch"
    if result["real_before"]:
        pytest.skip("a real flash_attn is installed here; the no-shadow case is tested separately")
    assert result["first"] is True and result["second"] is True
    assert result["count"] == 1 and result["last"], "the fallback must be appended once, at the end of sys.path"
    assert result["origin"].startswith(compat.fallback_path())
    assert result["logs"] == 1, "the 'fallback active' message is logged once per process"


def _fake_real_flash_attn(root: Path) -> Path:
    package = root / "flash_attn"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("REAL = True\n")
    return root


def test_install_leaves_a_real_flash_attn_alone(tmp_path: Path) -> None:
    fake_root = _fake_real_flash_attn(tmp_path / "site")
    result = _last_json(
        _python(
            """
            import importlib.util, json, sys
            from openrlhf_darts import compat
            installed = compat.install()
            import flash_attn
            print(json.dumps({"installed": installed, "on_path": compat.fallback_path() in sys.path,
                              "real": getattr(flash_attn, "REAL", False)}))
            """,
            env={"PYTHONPATH": str(fake_root)},
        )
    )
    assert result == {"installed": False, "on_path": False, "real": True}


def test_fallback_cannot_shadow_a_later_real_install(tmp_path: Path) -> None:
    # A real flash_attn that appears on the path after install() (e.g. site-packages, which precedes our appended entry)
    # must win: find_spec walks sys.path in order and the fallback is the last entry.
    fake_root = _fake_real_flash_attn(tmp_path / "site")
    result = _last_json(_python(f"""
            import importlib, importlib.util, json, sys
            from openrlhf_darts import compat
            first = compat.install()
            sys.path.insert(0, {str(fake_root)!r})
            importlib.invalidate_caches()
            spec = importlib.util.find_spec("flash_attn")
            print(json.dumps({{"first": first, "origin": spec.origin, "again": compat.install(),
                              "fallback_index": sys.path.index(compat.fallback_path()), "n": len(sys.path)}}))
            """))
    if not result["first"]:
        pytest.skip("a real flash_attn is installed here")
    assert result["origin"] == str(fake_root / "flash_attn" / "__init__.py")
    assert result["again"] is False, "install() reports the real module once one resolves"
    assert result["fallback_index"] == result["n"] - 1


def test_ray_runtime_env_carries_paths_and_thread_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    import openrlhf_darts

    package_root = str(Path(openrlhf_darts.__file__).resolve().parent.parent)
    monkeypatch.setenv("PYTHONPATH", "/from/driver")
    active = compat.install()

    runtime_env = compat.ray_runtime_env()
    entries = runtime_env["env_vars"]["PYTHONPATH"].split(os.pathsep)
    expected = ["/from/driver", package_root] + ([compat.fallback_path()] if active else [])
    assert entries == expected
    assert runtime_env["env_vars"]["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"

    given = {"env_vars": {"PYTHONPATH": "/given", "VLLM_CPU_OMP_THREADS_BIND": "0-1", "X": "1"}, "working_dir": "."}
    merged = compat.ray_runtime_env(given)
    assert merged["env_vars"]["PYTHONPATH"].split(os.pathsep)[0] == "/given", "the caller's PYTHONPATH stays first"
    assert merged["env_vars"]["VLLM_CPU_OMP_THREADS_BIND"] == "0-1" and merged["env_vars"]["X"] == "1"
    assert merged["working_dir"] == "."
    assert given["env_vars"]["PYTHONPATH"] == "/given", "the caller's dict is not mutated"


def test_ray_worker_route_imports_fallback_via_pythonpath_only() -> None:
    # A Ray worker never calls install(); the PYTHONPATH from ray_runtime_env alone must make flash_attn importable.
    if not compat.install():
        pytest.skip("a real flash_attn is installed here")
    pythonpath = compat.ray_runtime_env({"env_vars": {"PYTHONPATH": ""}})["env_vars"]["PYTHONPATH"]
    result = _last_json(
        _python(
            """
            import json
            from flash_attn.bert_padding import index_first_axis, pad_input, rearrange, unpad_input
            from flash_attn.utils.distributed import all_gather
            import flash_attn
            print(json.dumps({"file": flash_attn.__file__}))
            """,
            env={"PYTHONPATH": pythonpath},
        )
    )
    assert result["file"].startswith(compat.fallback_path())


def test_openrlhf_modules_import_with_fallback_and_unpad_round_trip() -> None:
    # One interpreter pays the ~15 s import once; it then runs upstream's own packing helpers (ring group None, the only
    # case reachable on CPU) on the docstring example from ring_attn_utils, so the fallback is checked through OpenRLHF.
    result = _last_json(
        _python(
            f"""
            import importlib, json
            import torch
            from openrlhf_darts import compat
            active = compat.install()
            for name in {list(OPENRLHF_MODULES)!r}:
                importlib.import_module(name)
            import flash_attn
            from openrlhf.models.ring_attn_utils import gather_and_pad_tensor, unpad_and_slice_tensor
            sequences = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
            mask = torch.tensor({MASK!r})
            packed, position_ids, rolled, pad_len, indices = unpad_and_slice_tensor(sequences, mask, None)
            restored = gather_and_pad_tensor(packed.float(), None, pad_len, indices, 2, 4)
            print(json.dumps({{
                "active": active, "fallback": compat.is_fallback_module(flash_attn), "packed": packed.tolist(),
                "position_ids": position_ids.tolist(), "rolled": rolled.tolist(), "pad_len": pad_len,
                "restored": restored.tolist(),
            }}))
            """,
            timeout=280,
        )
    )
    assert result["active"] == result["fallback"]
    # Kept tokens row by row: 1, 2, 3 | 4, 5, packed into one (1, 5) sequence.
    assert result["packed"] == [[1, 2, 3, 4, 5]]
    # Positions restart per sequence: cumsum(mask) - 1 = [0, 1, 2] and [0, 1].
    assert result["position_ids"] == [[0, 1, 2, 0, 1]]
    # Each row rolled left by one ([[2, 3, 0, 1], [5, 0, 0, 4]]), then read at indices [0, 1, 2, 4, 5]: 2, 3, 0, 5, 0.
    assert result["rolled"] == [[2, 3, 0, 5, 0]]
    assert result["pad_len"] == 0
    # pad_input puts the five values back at their flat indices and zeros the three masked-out positions.
    assert result["restored"] == [[1.0, 2.0, 3.0, 0.0], [4.0, 5.0, 0.0, 0.0]]
