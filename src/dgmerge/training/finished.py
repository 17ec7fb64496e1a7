"""A finished HAM training kept on disk until every row that reuses it is written.

HAM's merge-time variants (other r, TIES instead of RHM, best checkpoints) reuse one training
of the cell; the λ points train in between. A run stopped during those trainings used to lose
the finished training with the process and train it again on resume, about an hour per cell on
2 CPU cores. The file sits beside the run's checkpoints and holds everything `merge_trained`
needs, and `key`: the configs it was trained under, which decide who may reuse it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dgmerge.atomic import atomic_write
from dgmerge.merging import MergedState
from dgmerge.training.ham import HamResult

_FIELDS = ("merged_from", "sources", "trainable", "final_states", "historical_states", "best_states",
           "best_steps", "best_val_accs", "history", "wall_time_s")


def save_finished(path: Path, result: HamResult, key: dict[str, Any]) -> None:
    """Write `result` (trained under `key`) to `path`, atomically."""
    payload = {name: getattr(result, name) for name in _FIELDS}
    payload["merged_state"] = dict(result.merged_state)
    # The merge's diagnostics may hold non-tensor objects torch.load(weights_only) refuses.
    payload["merged_info"] = json.dumps(result.merged_state.info, default=_plain)
    payload["key"] = json.dumps(key, sort_keys=True)
    with atomic_write(path) as temp:
        torch.save(payload, temp)


def read_finished(path: Path) -> tuple[dict[str, Any], HamResult]:
    """The key a training was saved under and the training itself (ValueError on a bad file)."""
    try:
        saved = torch.load(path, weights_only=True, map_location="cpu")
        key = json.loads(saved["key"])
        merged = MergedState(saved["merged_state"], info=json.loads(saved["merged_info"]))
        return key, HamResult(merged_state=merged, **{name: saved[name] for name in _FIELDS})
    except Exception as exc:  # a truncated or foreign file: say which, do not guess
        raise ValueError(f"cannot read the finished HAM training {path}: {exc}; delete it to train again") from exc


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)
