"""`openrlhf_darts.bench.compare_runs` on small logs written here: JSONL and real TensorBoard event files."""

import json
from pathlib import Path

import pytest

from openrlhf_darts.bench import compare_runs

pytestmark = [pytest.mark.contract, pytest.mark.timeout(600)]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def two_runs(tmp_path):
    # Baseline: 4 steps of 100 s (70 s rollout). DARTS: 3 steps of 80 s (50 s rollout); keys in both spellings.
    baseline = _write_jsonl(
        tmp_path / "baseline.jsonl",
        [
            {
                "global_step": s,
                "timing/step_total": 100.0,
                "timing/generation": 70.0,
                "rollout/response_length_mean": 1000.0 - 10 * s,
                "rollout/reward_mean": 0.1 * s,
                "generated_samples": ["text", 0.5],  # non-numeric: ignored
            }
            for s in (1, 2, 3, 4)
        ],
    )
    darts = _write_jsonl(
        tmp_path / "darts.jsonl",
        [
            {
                "step": s,
                "train/timing/step_total": 80.0,
                "timing/generation": 50.0,
                "rollout/response_length_mean": 900.0 - 10 * s,
                "rollout/reward_mean": 0.1 * s,
                "darts/kept_length_mean": 850.0 + s,
                "darts/finished_length_mean": 1200.0,
            }
            for s in (1, 2, 3)
        ],
    )
    return baseline, darts


def test_jsonl_table_means_and_speedup(two_runs):
    runs = [compare_runs.load_run(path) for path in two_runs]
    assert runs[1]["timing/step_total"] == {1: 80.0, 2: 80.0, 3: 80.0}  # "train/" prefix dropped, "step" accepted
    assert "generated_samples" not in runs[0]
    lines, means = compare_runs.summarize(runs, ["baseline", "darts"])
    # Means over the 3 common steps: lengths (990+980+970)/3 = 980 and (890+880+870)/3 = 880; rewards 0.2 both.
    assert means["timing/step_total"] == [100.0, 80.0]
    assert means["rollout/response_length_mean"] == [980.0, 880.0]
    assert means["rollout/reward_mean"] == pytest.approx([0.2, 0.2])
    text = "\n".join(lines)
    # Step 4 exists only in the baseline: shown, with "-" for DARTS, and left out of the means.
    step4 = next(line for line in lines if line.split()[:1] == ["4"])
    assert step4.split() == ["4", "100.0", "-", "70.0", "-", "960", "-", "0.400", "-"]
    assert "means over the 3 steps every run logged" in text
    # Speedup of total step time over the common steps: 300 s / 240 s = 1.25.
    assert "speedup darts vs baseline = 1.250x" in text
    # Kept vs finished candidates: mean(851, 852, 853) = 852 against 1200.
    assert "darts: mean kept candidate length 852 vs finished candidates 1200 tokens" in text


def test_main_writes_table_and_plot(two_runs, tmp_path, capsys):
    out = tmp_path / "out"
    compare_runs.main([str(two_runs[0]), str(two_runs[1]), "--out", str(out), "--labels", "base", "darts"])
    printed = capsys.readouterr().out
    assert "speedup darts vs base = 1.250x" in printed
    assert (out / "compare.txt").read_text().splitlines()[0].split()[:3] == ["step", "step", "s"]
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_tensorboard_run_folder(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    # Written the way upstream's TensorboardLogger writes: <tensorboard_dir>/<run_name>, tags "train/<key>".
    writer = SummaryWriter(log_dir=str(tmp_path / "tb" / "run-a"))
    for step, seconds in [(1, 30.0), (2, 20.0)]:
        writer.add_scalar("train/timing/step_total", seconds, step)
        writer.add_scalar("train/rollout/reward_mean", step / 10, step)
    writer.close()
    run = compare_runs.load_run(tmp_path / "tb")  # the root with a single run resolves to it
    assert run["timing/step_total"] == {1: 30.0, 2: 20.0}
    assert run["rollout/reward_mean"] == pytest.approx({1: 0.1, 2: 0.2})

    SummaryWriter(log_dir=str(tmp_path / "tb" / "run-b")).close()
    with pytest.raises(ValueError, match="holds TensorBoard events for 2 runs"):
        compare_runs.load_run(tmp_path / "tb")


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="neither a .jsonl file nor a folder"):
        compare_runs.load_run(tmp_path / "missing.jsonl")
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"timing/step_total": 1.0}])
    with pytest.raises(ValueError, match=r"bad.jsonl:1 has no integer 'global_step' or 'step' field"):
        compare_runs.load_run(bad)
    no_timing = _write_jsonl(tmp_path / "no_timing.jsonl", [{"step": 1, "rollout/reward_mean": 0.5}])
    with pytest.raises(ValueError, match="logs no timing/step_total"):
        compare_runs.main([str(no_timing), str(no_timing), "--out", str(tmp_path / "o")])
