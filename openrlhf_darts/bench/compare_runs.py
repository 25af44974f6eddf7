"""Compare two training runs (baseline and DARTS) step by step: step time, rollout time, response length, reward.

    python -m openrlhf_darts.bench.compare_runs BASELINE DARTS [--labels baseline darts] [--out runs/compare]

BASELINE and DARTS are each a TensorBoard run folder (upstream's `--logger.tensorboard_dir` joined with
`--logger.wandb.run_name`; the folder holding the `events.out.tfevents.*` files) or a JSONL file with one object per
step (`global_step` or `step`, plus metric keys). Keys are upstream's status keys; TensorBoard's `train/` prefix is
dropped. Prints a side-by-side table and a summary (means over the steps both runs logged, and the speedup of the
total step time), and writes `compare.txt` and `compare.png` under `--out`.

The figures it reads (DARTS_SPEC.md §7 "Time" and "Lengths"):
- step time `timing/step_total`, rollout time `timing/generation` (seconds);
- response length `rollout/response_length_mean` (tokens the trainer saw) and reward `rollout/reward_mean`;
- for DARTS runs also `darts/kept_length_mean` against `darts/finished_length_mean` (kept vs the candidates that stopped
  by themselves; aborted candidates are left out, their partial lengths being lower bounds).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

# (key, column title, format) of the side-by-side table, in order.
COLUMNS: list[tuple[str, str, str]] = [
    ("timing/step_total", "step s", "{:.1f}"),
    ("timing/generation", "rollout s", "{:.1f}"),
    ("rollout/response_length_mean", "resp len", "{:.0f}"),
    ("rollout/reward_mean", "reward", "{:.3f}"),
]
DARTS_LENGTHS = ("darts/kept_length_mean", "darts/finished_length_mean")
TENSORBOARD_PREFIX = "train/"

Run = dict[str, dict[int, float]]  # metric key -> {global step -> value}


def load_run(path: str | Path) -> Run:
    """Every scalar series of one run, from a TensorBoard run folder or a JSONL file."""
    path = Path(path)
    if path.is_file() and path.suffix == ".jsonl":
        return _load_jsonl(path)
    if path.is_dir():
        return _load_tensorboard(_event_folder(path))
    raise ValueError(
        f"run {str(path)!r} is neither a .jsonl file nor a folder; pass a TensorBoard run folder "
        "(<--logger.tensorboard_dir>/<--logger.wandb.run_name>) or a JSONL log"
    )


def _event_folder(path: Path) -> Path:
    """`path` if it holds event files, else its single sub-folder that does (a `--logger.tensorboard_dir` root)."""
    if any(path.glob("events.out.tfevents.*")):
        return path
    runs = sorted({p.parent for p in path.rglob("events.out.tfevents.*")})
    if len(runs) == 1:
        return runs[0]
    raise ValueError(
        f"{str(path)!r} holds TensorBoard events for {len(runs)} runs {[str(r) for r in runs]}; pass one run folder"
    )


def _load_tensorboard(folder: Path) -> Run:
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={SCALARS: 0})  # 0 keeps every event
    accumulator.Reload()
    run: Run = {}
    for tag in accumulator.Tags()[SCALARS]:
        key = tag.removeprefix(TENSORBOARD_PREFIX)
        run[key] = {event.step: float(event.value) for event in accumulator.Scalars(tag)}
    return run


def _load_jsonl(path: Path) -> Run:
    run: Run = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        step = record.get("global_step", record.get("step"))
        if not isinstance(step, int):
            raise ValueError(f"{path}:{number} has no integer 'global_step' or 'step' field: {line[:120]!r}")
        for key, value in record.items():
            if key in ("global_step", "step") or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            run.setdefault(key.removeprefix(TENSORBOARD_PREFIX), {})[step] = float(value)
    return run


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summarize(runs: list[Run], labels: list[str]) -> tuple[list[str], dict[str, list[float]]]:
    """The side-by-side table as lines, and the per-run means of each column over the steps all runs logged."""
    steps = sorted(set().union(*(series.keys() for run in runs for series in run.values())))
    common = [s for s in steps if all(s in run.get("timing/step_total", {}) for run in runs)]
    header = ["step"] + [f"{title} [{label}]" for _, title, _ in COLUMNS for label in labels]
    widths = [max(6, len(h)) for h in header]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    for step in steps:
        cells = [str(step)]
        for key, _, fmt in COLUMNS:
            for run in runs:
                value = run.get(key, {}).get(step)
                cells.append("-" if value is None else fmt.format(value))
        lines.append("  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    means = {
        key: [_mean([run[key][s] for s in common if s in run.get(key, {})]) for run in runs] for key, _, _ in COLUMNS
    }
    lines.append("")
    lines.append(f"means over the {len(common)} steps every run logged:")
    for key, title, fmt in COLUMNS:
        values = "  ".join(f"{label}={fmt.format(v)}" for label, v in zip(labels, means[key]))
        lines.append(f"  {title:<10} {values}")
    totals = [sum(run.get("timing/step_total", {}).get(s, 0.0) for s in common) for run in runs]
    if len(runs) == 2 and totals[1] > 0:
        lines.append(
            f"  total step time {labels[0]}={totals[0]:.1f}s {labels[1]}={totals[1]:.1f}s: "
            f"speedup {labels[1]} vs {labels[0]} = {totals[0] / totals[1]:.3f}x"
        )
    for label, run in zip(labels, runs):
        if all(key in run for key in DARTS_LENGTHS):
            kept = _mean(list(run[DARTS_LENGTHS[0]].values()))
            every = _mean(list(run[DARTS_LENGTHS[1]].values()))
            lines.append(f"  {label}: mean kept candidate length {kept:.0f} vs finished candidates {every:.0f} tokens")
    return lines, means


def plot(runs: list[Run], labels: list[str], out_file: Path) -> None:
    """One panel per column against the step, plus reward against cumulative step time (wall-clock progress)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 3, figsize=(15, 8))
    panels = list(axes.flat)
    for axis, (key, title, _) in zip(panels, COLUMNS):
        for run, label in zip(runs, labels):
            series = sorted(run.get(key, {}).items())
            axis.plot([s for s, _ in series], [v for _, v in series], label=label)
        axis.set_title(key)
        axis.set_xlabel("global step")
        axis.set_ylabel(title)
        axis.legend()
    axis = panels[4]
    for run, label in zip(runs, labels):
        step_times = sorted(run.get("timing/step_total", {}).items())
        rewards = run.get("rollout/reward_mean", {})
        elapsed, xs, ys = 0.0, [], []
        for step, seconds in step_times:
            elapsed += seconds
            if step in rewards:
                xs.append(elapsed / 3600)
                ys.append(rewards[step])
        axis.plot(xs, ys, label=label)
    axis.set_title("reward against wall-clock")
    axis.set_xlabel("cumulative step time (h)")
    axis.set_ylabel("reward")
    axis.legend()
    axis = panels[5]
    for run, label in zip(runs, labels):
        for key, style in zip(DARTS_LENGTHS, ("-", "--")):
            series = sorted(run.get(key, {}).items())
            if series:
                axis.plot([s for s, _ in series], [v for _, v in series], style, label=f"{label} {key.split('/')[1]}")
    axis.set_title("DARTS: kept vs finished candidate lengths")
    axis.set_xlabel("global step")
    if axis.lines:
        axis.legend()
    figure.tight_layout()
    figure.savefig(out_file, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", help="TensorBoard run folder or JSONL log of the baseline run")
    parser.add_argument("darts", help="TensorBoard run folder or JSONL log of the DARTS run")
    parser.add_argument("--labels", nargs=2, default=["baseline", "darts"])
    parser.add_argument("--out", default="runs/compare", help="folder for compare.txt and compare.png")
    args = parser.parse_args(argv)

    runs = [load_run(args.baseline), load_run(args.darts)]
    for path, run in zip((args.baseline, args.darts), runs):
        if "timing/step_total" not in run:
            raise ValueError(f"{path!r} logs no timing/step_total; is it an OpenRLHF training run's log?")
    lines, _ = summarize(runs, args.labels)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.txt").write_text("\n".join(lines) + "\n")
    plot(runs, args.labels, out / "compare.png")
    print("\n".join(lines))
    print(f"\nwrote {out / 'compare.txt'} and {out / 'compare.png'}")


if __name__ == "__main__":
    main()
