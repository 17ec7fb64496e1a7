"""Each HAM training's wall time read from its TensorBoard event files, against what its rows record.

Until 2026-12-08 a training resumed from a checkpoint recorded only the time of its last process
(dgmerge.training.checkpoint now carries the time across resumes). This audit recovers the
full time of the trainings whose event files survive: every process that trained a run appended
one event file, whose scalars carry wall-clock timestamps, so a file spans last − first timestamp
plus one step. Steps redone after a resume (at most `checkpoint_every`) are counted twice.

    python benchmarks/results/pacs_cpu_converged/train_time_from_logs.py runs/bench-pacs-cpu

prints one line per training and the total the rows are missing. Needs the `tensorboard` package.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from dgmerge.evaluation.results import read_results


def file_span_s(path: Path) -> float:
    """Wall time one event file covers: last − first scalar timestamp, plus one mean step."""
    times = sorted({(event.step, event.wall_time) for event in EventFileLoader(str(path)).Load()
                    if event.HasField("summary")})
    if len(times) < 2:
        return 0.0
    (first_step, first), (last_step, last) = times[0], times[-1]
    return last - first + (last - first) / max(1, last_step - first_step)


def recorded_times(results: Path) -> dict[tuple[int, str, str], float]:
    """train_wall_time_s of each (seed, held-out domain, training directory name), from the rows."""
    out: dict[tuple[int, str, str], float] = {}
    for row in read_results(results):
        if row.get("train_wall_time_s") is not None and row["method"].startswith("ham:"):
            out.setdefault((row["seed"], row["test_domain"], row["method"].replace(":", "_")),
                           float(row["train_wall_time_s"]))
    return out


def main(run: Path) -> None:
    recorded = recorded_times(run / "results.jsonl")
    missing = 0.0
    print("seed domain training event-files from-logs-s recorded-s missing-s")
    for folder in sorted((run / "tensorboard").glob("seed*/*/ham_*")):
        files = sorted(folder.glob("events*"))
        key = (int(folder.parent.parent.name.removeprefix("seed")), folder.parent.name, folder.name)
        if key not in recorded:
            continue  # still training, or its row names it differently
        logged = sum(file_span_s(f) for f in files)
        gap = max(0.0, logged - recorded[key]) if len(files) > 1 else 0.0
        missing += gap
        print(*key, len(files), round(logged), round(recorded[key]), round(gap))
    print(f"missing from the rows: {missing / 3600:.2f} worker-hours (trainings with several event files)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/bench-pacs-cpu"))
