"""One local GRPO run on a CPU machine through upstream's own `train_ppo_ray`: `python -m openrlhf_darts.local.train`.

What runs is OpenRLHF 0.11.2's script itself, as `__main__`: its parser and validation, its `train()` (strategy,
`create_vllm_engines`, `RayActorGroup`s, `PPOTrainer.remote(...)`, model init, `fit`, final save), and inside `fit`
upstream's experience maker (`compute_advantages_and_returns`, e.g. `group_norm` = GRPO) and weight sync after every
update. Four classes are swapped in for the run, in the driver, through `upstream.train_classes`:

| upstream class        | local run                                  | why                                              |
|-----------------------|--------------------------------------------|--------------------------------------------------|
| `RolloutRayActor`     | `DartsRolloutRayActor`                     | fp32 on CPU, CPU weight-sync payloads, DARTS groups |
| `PPOTrainer`          | `LocalPPOTrainer` (DartsPPOTrainer + records) | DARTS collaborators; per-step records, sync probe |
| `PolicyModelActor`    | `backends.cpu` `CpuPolicyActor`            | upstream's DeepSpeed actors call `torch.cuda`    |
| `ReferenceModelActor` | `backends.cpu` `CpuReferenceActor`         | same                                             |

Both runs of a comparison get the same four classes; with `--darts.enable` off the trainer and engine run upstream's
sample generation unchanged, so the runs differ only in their `--darts.*` flags.

The command starts its own local Ray cluster (once the flags are parsed) with logical resources sized to upstream's
layout: one logical GPU and CPU per engine and per model actor, plus CPUs for the trainer. Ray resources are only
labels; the processes share the machine's cores. When `RAY_ADDRESS` is set, as it is inside a Ray job (the CPU mode
of examples/scripts/slurm_launch.sh submits one), it attaches to that cluster instead, after checking that the
cluster's CPU and GPU labels cover the same layout (ValueError naming the `ray start` labels to use otherwise).
Driver-side prints (upstream prints its whole args namespace) go to `<run_dir>/driver.log`; a progress bar follows the
steps, and the command line prints each step's record as `step record {json}` (a Ray job's log shows them).

Flags: every upstream `train_ppo_ray` flag, every `--darts.*` flag and every `--tail_batching.*` flag (the comparison
arm: the trainer swaps in the tail-batching generator, the engine actor aborts whole groups), after the local ones below:
`--run_dir DIR` (records, checkpoints, logs; required), `--sync_probe` (check every weight sync against the engine),
`--verbose` (actor logs on the console).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import runpy
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

# A line `step record {"step": 1, ...}` per training step on the command's stdout (see `main`).
STEP_RECORD_PREFIX = "step record "

CPU_FLAGS = [
    # One engine, one policy actor, one reference actor: what a 2-core machine can hold.
    "--vllm.num_engines", "1",
    "--vllm.tensor_parallel_size", "1",
    "--actor.num_nodes", "1",
    "--actor.num_gpus_per_node", "1",
    "--ref.num_nodes", "1",
    "--ref.num_gpus_per_node", "1",
    # vLLM on CPU: a small memory share (the DARTS engine actor sets a 256 MiB KV cache), no graphs.
    "--vllm.gpu_memory_utilization", "0.15",
    "--vllm.enforce_eager",
    # Candidates of one prompt share its prefix; on in both runs so they stay identical apart from --darts.*.
    "--vllm.enable_prefix_caching",
    # Flash attention does not exist on CPU.
    "--ds.attn_implementation", "sdpa",
]  # fmt: skip


def logical_resources(args) -> tuple[int, int]:
    """(num_cpus, num_gpus) labels for upstream's layout of these args: a GPU+CPU per engine and model actor."""
    gpus = (args.vllm.num_engines or 0) * args.vllm.tensor_parallel_size
    gpus += args.actor.num_nodes * args.actor.num_gpus_per_node
    if args.algo.kl.init_coef > 0:
        gpus += args.ref.num_nodes * args.ref.num_gpus_per_node
    if args.algo.advantage.estimator == "gae":
        gpus += args.critic.num_nodes * args.critic.num_gpus_per_node
    if not (args.reward.remote_url or args.train.agent_func_path):  # an agent scores its own samples (no RM)
        gpus += args.reward.num_nodes * args.reward.num_gpus_per_node
    return gpus + 2, gpus  # +2 CPUs: the trainer actor and Ray's own tasks


def attach_to_cluster(address: str, num_cpus: int, num_gpus: int, **init_kwargs) -> None:
    """Connect to the Ray cluster at `address` and check its CPU and GPU labels cover upstream's layout.

    Placement groups that ask for more than the cluster has wait forever, so a short cluster fails here, before any
    actor exists, with the labels to start Ray with.
    """
    import ray

    ray.init(address=address, **init_kwargs)
    have = ray.cluster_resources()
    have_cpus, have_gpus = have.get("CPU", 0), have.get("GPU", 0)
    if have_cpus < num_cpus or have_gpus < num_gpus:
        ray.shutdown()
        raise ValueError(
            f"the Ray cluster at RAY_ADDRESS={address} has {have_cpus:g} CPU and {have_gpus:g} GPU labels; upstream's "
            f"layout of these flags needs {num_cpus} CPU and {num_gpus} GPU labels (one GPU and CPU per engine and "
            f"model actor, 2 more CPUs); start Ray with `ray start --num-cpus={num_cpus} --num-gpus={num_gpus}` or "
            f"more (slurm_launch.sh: CPU_MODE=1 GPUS_PER_NODE={num_gpus} RAY_NUM_CPUS={num_cpus}), or unset "
            "RAY_ADDRESS to start a local cluster"
        )


class _StepProgress(threading.Thread):
    """Follows the step log the trainer writes and shows one tqdm bar with the latest reward and length."""

    def __init__(self, path: Path, total: int | None, desc: str, echo: TextIO | None = None):
        super().__init__(daemon=True)
        self.path, self.total, self.desc, self.echo = path, total, desc, echo
        self.done = threading.Event()

    def run(self) -> None:
        from tqdm import tqdm

        # With the records echoed into a log (stderr not a terminal, e.g. a Ray job's log), they are the progress; a
        # bar would only interleave carriage-return fragments with them.
        quiet = self.echo is not None and not sys.stderr.isatty()
        bar = tqdm(total=self.total, desc=self.desc, unit="step", file=sys.stderr, dynamic_ncols=True, disable=quiet)
        seen = 0
        while True:
            finished = self.done.wait(1.0)
            rows = read_steps(self.path)
            if len(rows) > seen:
                if self.echo is not None:
                    for row in rows[seen:]:
                        bar.write(STEP_RECORD_PREFIX + json.dumps(row), file=self.echo)
                        self.echo.flush()
                last = rows[-1]
                bar.set_postfix(
                    reward=f"{last.get('rollout/reward_mean', float('nan')):.3f}",
                    length=f"{last.get('rollout/response_length_mean', float('nan')):.1f}",
                    rollout_s=f"{last.get('timing/generation', float('nan')):.1f}",
                )
                bar.update(len(rows) - seen)
                seen = len(rows)
            if finished:
                bar.close()
                return


def read_steps(path: str | os.PathLike) -> list[dict]:
    """The JSON lines of a local run's `steps.jsonl` (per-step records, in step order) or `evals.jsonl` (held-out
    evaluations); [] before the first one."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(
    argv: list[str],
    run_dir: str | os.PathLike,
    *,
    sync_probe: bool = False,
    verbose: bool = False,
    progress_desc: str = "train",
    total_steps: int | None = None,
    env_vars: dict[str, str] | None = None,
    echo_steps: bool = False,
    classes: dict | None = None,
) -> list[dict]:
    """Run upstream's `train_ppo_ray` locally with `CPU_FLAGS + argv`; returns the per-step records.

    With `--eval.dataset`, the held-out evaluations (the starting policy, then every `--eval.steps`) land in
    `<run_dir>/evals.jsonl` (`read_steps` reads it too; see local/trainer.py for the record).

    Starts and shuts down its own Ray cluster, or attaches to the one `RAY_ADDRESS` names (inside a Ray job), so it
    raises ValueError if Ray is already initialized in this process. `echo_steps`: print each step's record on this
    process's stdout (`STEP_RECORD_PREFIX` + JSON) as it arrives; upstream's own prints still go to driver.log.
    `classes` replaces some of the four swapped-in Ray classes (keys of `upstream.train_classes`: trainer, rollout,
    policy, reference, critic), e.g. with subclasses that probe the run (tests/contract/test_resume.py).
    """
    import ray

    from openrlhf_darts import compat, upstream
    from openrlhf_darts.backends.cpu.groups import actor_class
    from openrlhf_darts.config import DartsConfig
    from openrlhf_darts.local.trainer import EVAL_LOG_ENV, STEP_LOG_ENV, SYNC_PROBE_ENV, LocalPPOTrainer
    from openrlhf_darts.rollout.rollout_actor import DartsRolloutRayActor
    from openrlhf_darts.tail_batching import TailBatchingConfig

    if ray.is_initialized():
        raise ValueError(
            "Ray is already initialized in this process; the local mode starts its own cluster sized to upstream's "
            "layout. Call run() from a fresh process (python -m openrlhf_darts.local.train ...)"
        )
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    step_log, eval_log = run_dir / "steps.jsonl", run_dir / "evals.jsonl"
    step_log.unlink(missing_ok=True)
    eval_log.unlink(missing_ok=True)
    full_argv = [
        *CPU_FLAGS,
        "--ckpt.path", str(run_dir / "ckpt"),
        "--ckpt.output_dir", str(run_dir / "final_model"),
        "--logger.tensorboard_dir", str(run_dir / "tensorboard"),
        *argv,
    ]  # fmt: skip

    def on_parsed(args) -> None:
        DartsConfig.from_args(args)  # bad --darts.* values fail here, before Ray starts
        TailBatchingConfig.from_args(args)  # and bad --tail_batching.* ones
        num_cpus, num_gpus = logical_resources(args)
        env = {**(env_vars or {}), STEP_LOG_ENV: str(step_log), EVAL_LOG_ENV: str(eval_log)}
        env[SYNC_PROBE_ENV] = "1" if sync_probe else "0"
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        runtime_env = compat.ray_runtime_env({"env_vars": env})
        address = os.environ.get("RAY_ADDRESS")
        if address:
            attach_to_cluster(address, num_cpus, num_gpus, runtime_env=runtime_env, log_to_driver=verbose)
            return
        ray.init(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            runtime_env=runtime_env,
            include_dashboard=False,
            log_to_driver=verbose,
        )

    progress = _StepProgress(step_log, total_steps, progress_desc, echo=sys.stdout if echo_steps else None)
    saved_argv = sys.argv
    sys.argv = ["openrlhf.cli.train_ppo_ray", *full_argv]
    progress.start()
    try:
        with contextlib.ExitStack() as stack:
            if not verbose:
                log = stack.enter_context(open(run_dir / "driver.log", "w"))
                stack.enter_context(contextlib.redirect_stdout(log))
            stack.enter_context(upstream.darts_flags_in_upstream_cli(on_parsed))
            swapped = {
                "trainer": LocalPPOTrainer,
                "rollout": DartsRolloutRayActor,
                "policy": actor_class("policy"),
                "reference": actor_class("reference"),
                "critic": actor_class("critic"),
            }
            stack.enter_context(upstream.train_classes(**{**swapped, **(classes or {})}))
            runpy.run_module("openrlhf.cli.train_ppo_ray", run_name="__main__", alter_sys=True)
    finally:
        sys.argv = saved_argv
        progress.done.set()
        progress.join()
        if ray.is_initialized():
            ray.shutdown()
    return read_steps(step_log)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="One local GRPO run through upstream's train_ppo_ray (CPU model actors, DARTS engine actor); "
        "every other flag goes to upstream's parser.",
        add_help=False,
    )
    parser.add_argument("--run_dir", required=True, help="folder for steps.jsonl, checkpoints, logs, final model")
    parser.add_argument("--sync_probe", action="store_true", help="check each weight sync against the engine")
    parser.add_argument("--verbose", action="store_true", help="show Ray actor logs")
    local, rest = parser.parse_known_args(argv)
    address = os.environ.get("RAY_ADDRESS")
    cluster = f"attaching to the Ray cluster at RAY_ADDRESS={address}" if address else "starting a local Ray cluster"
    print(f"local.train: {sys.executable}, {cluster}", flush=True)
    start = time.perf_counter()
    rows = run(rest, local.run_dir, sync_probe=local.sync_probe, verbose=local.verbose, echo_steps=True)
    print(
        f"{len(rows)} steps in {time.perf_counter() - start:.1f} s; records in {Path(local.run_dir) / 'steps.jsonl'}"
    )


if __name__ == "__main__":
    main()
