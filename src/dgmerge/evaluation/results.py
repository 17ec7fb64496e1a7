"""One JSON line per result, appended to results.jsonl (DomainBed-style records).

Every row says what produced it: dataset, test domain, seed, method, hyperparameters,
split, selection rule, code version, machine and wall time. Rows are only ever appended.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from dgmerge.machine import machine_info
from dgmerge.version import code_version

REQUIRED_FIELDS = (
    "dataset", "test_domain", "seed", "method", "hparams", "split", "selection",
    "code_version", "wall_time_s", "test_acc",
)


def make_row(*, dataset: str, test_domain: str, seed: int, method: str, hparams: dict[str, Any],
             split: dict[str, Any], selection: str, test_acc: float, wall_time_s: float,
             **extra: Any) -> dict[str, Any]:
    """Build a result row with every required field filled in."""
    row = {
        "dataset": dataset, "test_domain": test_domain, "seed": seed, "method": method,
        "hparams": hparams, "split": split, "selection": selection,
        "test_acc": float(test_acc), "wall_time_s": round(float(wall_time_s), 3),
        "code_version": code_version(), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
    }
    row.update(extra)
    return row


def append_result(path: Path, row: dict[str, Any]) -> None:
    """Append one row as a single JSON line; the write is flushed and fsynced.

    One write call per line keeps concurrent appenders from interleaving partial lines.
    """
    missing = [k for k in REQUIRED_FIELDS if k not in row]
    if missing:
        raise ValueError(f"result row is missing {', '.join(missing)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row, sort_keys=True, default=str) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def read_results(path: Path) -> list[dict[str, Any]]:
    """All rows of a results file; a malformed line is an error naming the file and line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no results file at {path}")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not a JSON line ({exc.msg})") from exc
    return rows
