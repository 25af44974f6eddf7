"""The Slurm launcher run the way users run it: `sbatch examples/scripts/slurm_launch.sh <training script>` on a real
one-node Slurm cluster that `scripts/slurm_local.sh up` brings up on this machine (slurm-wlm 22.05 and munge from
Debian's packages, installed with apt when absent).

- The CPU smoke job (`train_smoke_cpu_darts.sh`: local mode, tiny model, 2 steps) goes through the launcher's CPU mode:
  Ray head via srun with logical GPU labels, the node wait, `ray job submit` shipping the repository, the job's own
  environment (the project's .venv Python), local mode attaching to the job's cluster. Checked: the job ended
  COMPLETED (sbatch --wait's exit status and `scontrol show job`; there is no accounting database), its log holds the
  two step records with `darts/*` metrics (and they are the rows the trainer wrote to steps.jsonl), and no process of
  the job's Ray cluster is left afterwards.
- The launcher's own errors, each in its own job: a training script that does not exist, a GPU-mode submission on
  an allocation without GPUs, a bad knob, an externally managed system Python without Ray (never pip-installed into),
  and a node that never joins (EXPECTED_NODES=2 on one node, NODE_WAIT_S shortened).

Every Ray port and the Slurm daemons' ports are free ports picked here, and Ray's temporary folder is the test's own,
so other Ray clusters on the machine are never touched. When the cluster cannot come up (not root, no apt, daemons
that do not start) the tests are skipped with the reason, and under CI=true that skip is a failure.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from openrlhf_darts.local.train import STEP_RECORD_PREFIX

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
LOCAL_CLUSTER = REPO / "scripts" / "slurm_local.sh"
LAUNCHER = "examples/scripts/slurm_launch.sh"
SMOKE = "examples/scripts/train_smoke_cpu_darts.sh"


def _skip_or_fail(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; under CI=true the Slurm tests must run", pytrace=False)
    pytest.skip(reason)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _pid(path: Path) -> int:
    return int(path.read_text().strip())


@pytest.fixture(scope="module")
def slurm():
    """A one-node Slurm cluster from scripts/slurm_local.sh, on free ports, in a folder of its own; down afterwards."""
    if os.geteuid() != 0:
        _skip_or_fail("the one-node Slurm cluster needs root (apt, daemons without systemd)")
    # Not under pytest's tmp folder: munged runs as user munge, which cannot enter root's 0700 pytest folders.
    folder = Path(tempfile.mkdtemp(prefix="darts-slurm-", dir="/tmp"))
    folder.chmod(0o755)
    ctld_port, slurmd_port = _free_ports(2)
    env = {
        **os.environ,
        "SLURM_LOCAL_DIR": str(folder),
        "SLURMCTLD_PORT": str(ctld_port),
        "SLURMD_PORT": str(slurmd_port),
    }
    env.pop("SLURM_CONF", None)
    env.pop("RAY_ADDRESS", None)  # the job's Ray is the one the launcher starts
    up = subprocess.run(["bash", str(LOCAL_CLUSTER), "up"], env=env, capture_output=True, text=True, timeout=1200)
    if up.returncode != 0:
        subprocess.run(["bash", str(LOCAL_CLUSTER), "down"], env=env, capture_output=True, timeout=300)
        shutil.rmtree(folder, ignore_errors=True)
        _skip_or_fail(f"scripts/slurm_local.sh up failed (exit {up.returncode}): {up.stderr[-2000:]}")
    env["SLURM_CONF"] = str(folder / "slurm.conf")
    pids = {name: _pid(folder / "run" / f"{name}.pid") for name in ("munged", "slurmctld", "slurmd")}
    yield SimpleNamespace(env=env, folder=folder)
    down = subprocess.run(["bash", str(LOCAL_CLUSTER), "down"], env=env, capture_output=True, text=True, timeout=300)
    assert down.returncode == 0, down.stderr
    for name, pid in pids.items():
        assert not Path(f"/proc/{pid}").exists(), f"{name} (pid {pid}) still runs after `slurm_local.sh down`"
    shutil.rmtree(folder)


def _job_fields(env: dict, job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (Slurm keeps finished jobs for MinJobAge, 300 s by default)."""
    out = subprocess.run(
        ["scontrol", "show", "job", "--oneliner", job_id], env=env, capture_output=True, text=True, check=True
    ).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def _job_processes(job_id: str, temp_dir: str) -> list[str]:
    """Processes left from the job: a Slurm job's processes, Ray's included, inherit SLURM_JOB_ID and
    SLURM_CLUSTER_NAME; Ray's own processes also carry the job's --temp-dir on their command line."""
    marks = {f"SLURM_JOB_ID={job_id}".encode(), b"SLURM_CLUSTER_NAME=darts-local"}
    left = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = set((proc / "environ").read_bytes().split(b"\0"))
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # exited meanwhile
            continue
        if marks <= environ or temp_dir in cmdline:
            left.append(f"{proc.name}: {cmdline[:200]}")
    return left


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def _sbatch(slurm, tmp_path: Path, script: str, *sbatch_args: str, timeout: int = 2100, **knobs: str):
    """`sbatch --wait` the launcher with `script` in CPU mode on free Ray ports; the job, its output and its log."""
    ray_port, dashboard_port, client_port, agent_port, env_agent_port = ports = _free_ports(5)
    temp_dir = f"/tmp/ray-darts-test-{uuid.uuid4().hex[:8]}"  # short: Ray's socket paths live under it
    env = {
        **slurm.env,
        "CPU_MODE": "1",
        "RAY_PORT": str(ray_port),
        "DASHBOARD_PORT": str(dashboard_port),
        "RAY_CLIENT_PORT": str(client_port),
        "DASHBOARD_AGENT_PORT": str(agent_port),
        "RUNTIME_ENV_AGENT_PORT": str(env_agent_port),
        "RAY_TEMP_DIR": temp_dir,
        "LOG_DIR": str(tmp_path / "logs"),
        "OUT_ROOT": str(tmp_path / "runs"),
        **knobs,
    }
    output = tmp_path / "slurm-%j.out"
    command = ["sbatch", "--wait", "--parsable", "--nodes=1", "--gpus-per-node=0", f"--output={output}"]
    start = time.monotonic()
    done = subprocess.run(
        [*command, *sbatch_args, LAUNCHER, script], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    wall_s = time.monotonic() - start
    job_id = done.stdout.strip().split(";")[0]
    assert job_id.isdigit(), f"sbatch printed no job id: {done.stdout!r} {done.stderr!r}"
    out_file = tmp_path / f"slurm-{job_id}.out"
    log_file = tmp_path / "logs" / f"{Path(script).stem}-{job_id}.log"
    try:
        # What Ray shipped as the job's working_dir, as unpacked on the node: top-level names and bytes.
        shipped = {}
        for package in Path(temp_dir).glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*"):
            if package.is_dir():
                files = [f for f in package.rglob("*") if f.is_file()]
                shipped = {"names": {p.name for p in package.iterdir()}, "bytes": sum(f.stat().st_size for f in files)}
        # Ray's ports are free again and no process of the job is left. Grace for exiting ones: `ray stop` signals
        # them and returns; on a loaded 2-core machine a vLLM worker took over 10 s to exit (CI), so up to 60 s.
        for _ in range(120):
            left = _job_processes(job_id, temp_dir)
            busy = [port for port in ports if not _port_is_free(port)]
            if not left and not busy:
                break
            time.sleep(0.5)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    return SimpleNamespace(
        returncode=done.returncode,
        id=job_id,
        fields=_job_fields(env, job_id),
        out=out_file.read_text() if out_file.is_file() else "",
        log=log_file.read_text() if log_file.is_file() else None,
        left=left,
        busy_ports=busy,
        shipped=shipped,
        wall_s=wall_s,
        env=env,
    )


# ---- the CPU smoke job through the launcher -----------------------------------------------------------------------


def test_cpu_smoke_job_runs_through_the_launcher(slurm, tmp_path):
    job = _sbatch(slurm, tmp_path, SMOKE)
    lines = (job.log or "").splitlines()
    records = [json.loads(line[len(STEP_RECORD_PREFIX) :]) for line in lines if line.startswith(STEP_RECORD_PREFIX)]
    assert sum(STEP_RECORD_PREFIX in line for line in lines) == len(records)  # each record on a line of its own
    print(f"\nsbatch --wait wall time: {job.wall_s:.0f} s (job {job.id}); the job log's step records:")
    print("\n".join(line for line in lines if line.startswith(STEP_RECORD_PREFIX)))
    assert job.returncode == 0, f"job {job.id} failed:\n{job.out[-6000:]}"
    assert (job.fields["JobState"], job.fields["ExitCode"]) == ("COMPLETED", "0:0"), job.fields
    assert job.log is not None, f"no job log:\n{job.out[-3000:]}"

    # The job ran on the project's .venv Python and local mode attached to the job's Ray cluster.
    assert f"local.train: {REPO}/.venv/bin/python, attaching to the Ray cluster at RAY_ADDRESS=" in job.log
    # Ray shipped the repository as the job's working_dir, small: .venv, .git, runs and data stay out.
    print(
        f"working_dir shipped: {job.shipped.get('bytes', 0) / 2**20:.1f} MiB, {sorted(job.shipped.get('names', []))}"
    )
    assert {"openrlhf_darts", "examples", "scripts"} <= job.shipped["names"], job.shipped
    assert not {".venv", ".git", "runs", "data"} & job.shipped["names"], job.shipped
    assert job.shipped["bytes"] < 20 * 2**20, job.shipped

    # Two step records with DARTS metrics, exactly the rows the trainer appended to steps.jsonl.
    assert [r["step"] for r in records] == [1, 2]
    steps_file = tmp_path / "runs" / "smoke-cpu-darts" / "steps.jsonl"
    assert records == [json.loads(line) for line in steps_file.read_text().splitlines()]
    for record in records:
        # 8 prompts x n=4 kept samples reach upstream's trainer, from 4 to 8 candidates per prompt
        assert record["rollout/num_samples"] == 32
        assert 4 <= record["darts/candidates_mean"] <= record["darts/candidates_max"] <= 8
        assert record["darts/tokens_generated"] >= record["darts/tokens_kept"] > 0
        assert record["local/engine_unfinished_requests"] == 0

    assert not job.left, "processes of the job are still running:\n" + "\n".join(job.left)
    assert not job.busy_ports, f"Ray ports still bound after the job: {job.busy_ports}"
    assert "Ray stopped on 1 node(s); job exit status 0" in job.out


# ---- the launcher's own errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "script, sbatch_args, knobs, message",
    [
        (
            "examples/scripts/train_no_such_script.sh",
            (),
            {},
            f"training script examples/scripts/train_no_such_script.sh not found under {REPO}; pass a path relative "
            "to the repository",
        ),
        (
            SMOKE,
            (),
            {"CPU_MODE": "0"},
            "the allocation has no GPUs (--gpus-per-node=0) but CPU_MODE is not set; set CPU_MODE=1 for Ray with "
            "logical GPUs, or submit without --gpus-per-node=0",
        ),
        (SMOKE, (), {"EXPECTED_NODES": "0"}, "EXPECTED_NODES=0 must be a positive whole number"),
    ],
    ids=["missing-script", "gpu-mode-without-gpus", "bad-expected-nodes"],
)
def test_launcher_rejects_bad_input_before_any_srun(slurm, tmp_path, script, sbatch_args, knobs, message):
    job = _sbatch(slurm, tmp_path, script, *sbatch_args, timeout=300, **knobs)
    assert job.returncode == 2, job.out
    assert (job.fields["JobState"], job.fields["ExitCode"]) == ("FAILED", "2:0"), job.fields
    assert f"slurm_launch.sh: {message}" in job.out
    assert "Ray head" not in job.out  # nothing ran: the check came before the first srun
    assert job.log is None


def test_system_python_without_ray_is_never_pip_installed_into(slurm, tmp_path):
    system_python = "/usr/bin/python3"
    probe = subprocess.run([system_python, "-c", "import ray"], capture_output=True)
    assert Path(system_python).is_file() and probe.returncode != 0, "precondition: Debian's python3 has no Ray"
    job = _sbatch(slurm, tmp_path, SMOKE, timeout=300, PYTHON=system_python)
    assert job.returncode != 0 and job.fields["JobState"] == "FAILED", job.out
    assert (
        f"{system_python} has no Ray, not Ray 2.55.0, and is an externally managed system Python (PEP 668)" in job.out
    )
    assert "installing ray" not in job.out
    assert "Ray runtime started" not in job.out and job.log is None


def test_node_that_never_joins_fails_after_the_wait_and_stops_ray(slurm, tmp_path):
    job = _sbatch(slurm, tmp_path, SMOKE, timeout=900, EXPECTED_NODES="2", NODE_WAIT_S="15")
    print(f"\nsbatch --wait wall time: {job.wall_s:.0f} s (job {job.id})")
    assert job.returncode == 1, job.out
    assert (job.fields["JobState"], job.fields["ExitCode"]) == ("FAILED", "1:0"), job.fields
    assert "Ray runtime started" in job.out  # the head came up; the second node is what never came
    assert (
        "only 1 of 2 nodes joined the Ray cluster within 15 s (NODE_WAIT_S); see the ray start output of the missing "
        "nodes above, or set EXPECTED_NODES" in job.out
    )
    assert job.log is None  # no Ray job was submitted
    assert not job.left, "processes of the job are still running:\n" + "\n".join(job.left)
    assert not job.busy_ports, f"Ray ports still bound after the job: {job.busy_ports}"
    assert "Ray stopped on 1 node(s); job exit status 1" in job.out
