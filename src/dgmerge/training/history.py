"""Per-step training records as CSV (one file per training run), read back by the reports."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from dgmerge.atomic import atomic_write


def save_history(path: Path, history: list[dict[str, Any]]) -> Path:
    """Write per-step training records as CSV (columns = union of record keys), atomically."""
    path = Path(path)
    columns: list[str] = []
    for record in history:
        columns += [k for k in record if k not in columns]
    with atomic_write(path) as temp, open(temp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
    return path
