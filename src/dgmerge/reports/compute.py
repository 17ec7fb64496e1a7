"""Where a run's compute went: worker-hours per kind of method, read from the rows' wall times.

A row's `wall_time_s` includes the training it ran; rows that reuse a training (MA and SWAD ride
on ERM's run, HAM's r points and merge-time ablations on its λ training, DiWA greedy on DiWA's
runs) carry the same `train_wall_time_s` as the row that paid for it. Each training is counted
once per cell, so the total is the compute that produced the rows. Work lost with a stopped
machine, or done again after a resume, wrote no row and is not in it. A training resumed from a
checkpoint counts the time of every process that trained it; rows written before checkpoints
carried their wall time (dgmerge.training.checkpoint) count only the time since the last resume.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

from dgmerge.reports.markdown import markdown_table

Row = dict[str, Any]

# Display names, in the order of the table.
GROUPS = {
    "ham": "HAM (its λ points, the r grid and the chosen row)",
    "ham_reference": "HAM's λ 0.1 training for the ablations' reference, where λ 0.1 was not chosen",
    "ham_ablations": "HAM ablations (w/o SAE, w/o OPA, other SAE rule, other λ; merge-time ones)",
    "ham_soup": "HAM soup",
    "diwa": "DiWA (its M ERM runs)",
    "erm": "ERM (MA and SWAD ride on its run)",
    "erm_ma": "ERM + MA (beyond ERM's run)",
    "swad": "SWAD (beyond ERM's run)",
    "single_source": "Single-source models",
    "merge": "Merges of the single-source models",
    "linear_probe": "Frozen linear probe",
}


def _group(row: Row) -> str:
    group = row.get("method_group") or row["method"].split(":")[0]
    if group == "ham_variants":
        # Tuning points belong to HAM's own row; the reference trains only where the chosen λ
        # differs from the ablations' λ; the other variants are the ablations.
        if row.get("tuning_of"):
            return "ham"
        return "ham_reference" if row["method"] == "ham:reference" else "ham_ablations"
    return group


def machine_label(row: Row) -> str:
    """The machine a row records (dgmerge.machine), as one line; rows from before the field say so."""
    machine = row.get("machine")
    if not isinstance(machine, dict):
        return "not recorded (rows written before rows named their machine)"
    label = f"{machine.get('cpu', '?')}, {machine.get('cpus', '?')} CPUs, {machine.get('threads', '?')} thread(s)"
    return f"{label}, {machine['gpu']}" if machine.get("gpu") else label


def compute_seconds(rows: list[Row], by: Callable[[Row], str] = _group) -> dict[str, float]:
    """Seconds of worker time per `by(row)` (by default the keys of GROUPS, or a row's own group),
    each training once: a training shared by rows of several groups is paid by the first row."""
    out: dict[str, float] = defaultdict(float)
    paid: set[tuple[Any, Any, float]] = set()
    for row in rows:
        wall = float(row.get("wall_time_s") or 0.0)
        train = row.get("train_wall_time_s")
        group = by(row)
        if not isinstance(train, (int, float)) or wall < train:
            # No training, or one another row ran: the row's own time is all it cost.
            out[group] += wall
            continue
        out[group] += wall - train
        key = (row.get("seed"), row.get("test_domain"), float(train))
        if key not in paid:
            paid.add(key)
            out[group] += train
    return dict(out)


def compute_markdown(rows: list[Row]) -> str:
    """A table of worker-hours and shares per group, largest first, with the total."""
    seconds = compute_seconds(rows)
    total = sum(seconds.values())
    if total <= 0:
        return "(no rows with wall times yet)"
    rows = [[GROUPS.get(group, group), f"{value / 3600:.2f}", f"{100 * value / total:.1f} %"]
            for group, value in sorted(seconds.items(), key=lambda kv: -kv[1])]
    rows.append(["**Total**", f"**{total / 3600:.2f}**", "100 %"])
    return "\n".join(markdown_table(["What", "worker-hours", "share"], rows, "lrr"))


def machines_markdown(rows: list[Row]) -> str:
    """Rows and worker-hours per machine the rows record: a run resumed across machines shows
    which produced what, since wall times compare only on one machine."""
    seconds = compute_seconds(rows, by=machine_label)
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        counts[machine_label(row)] += 1
    table = [[label, str(counts[label]), f"{seconds.get(label, 0.0) / 3600:.2f}"]
             for label in sorted(counts, key=lambda label: -counts[label])]
    return "\n".join(markdown_table(["Machine", "rows", "worker-hours"], table, "lrr"))
