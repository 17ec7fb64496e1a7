"""Files a run writes besides models: training histories (CSV).

Models are written and read by `dgmerge.files` (save_model, read_meta). Every write goes to
a temp file in the same folder and is renamed into place, so an interrupted run never
leaves a half-written log behind.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from dgmerge.atomic import atomic_write, write_text_atomic  # noqa: F401  (re-exported)

# kept until nothing imports these from here (gating/files.py,
# bench_dg.py and bench_multitask.py import these from here), and for pipeline/experiment.py
# (save_model), whose owner switches it over.
from dgmerge.files import META_KEY, save_model  # noqa: F401  (re-exported)
from dgmerge.files import read_meta as read_model_meta  # noqa: F401  (re-exported)


def save_history(path: Path, history: list[dict[str, Any]]) -> Path:
    """Write per-step training records as CSV (columns = union of record keys)."""
    path = Path(path)
    columns: list[str] = []
    for record in history:
        columns += [k for k in record if k not in columns]
    with atomic_write(path) as temp, open(temp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
    return path
