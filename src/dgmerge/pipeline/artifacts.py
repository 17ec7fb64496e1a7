"""Files a run writes: trained models (safetensors + metadata) and training histories (CSV).

Every write goes to a temp file in the same folder and is renamed into place, so an
interrupted run never leaves a half-written model or log behind.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dgmerge.atomic import atomic_write, write_text_atomic  # noqa: F401  (re-exported)

META_KEY = "dgmerge"


def save_model(path: Path, model: torch.nn.Module, meta: dict[str, Any]) -> Path:
    """Write `model.state_dict()` as safetensors with `meta` (JSON) in the file's metadata."""
    path = Path(path)
    # safetensors refuses shared or non-contiguous storage; a contiguous clone is cheap here.
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_write(path) as temp:
        save_file(state, str(temp), metadata={META_KEY: json.dumps(meta, sort_keys=True)})
    return path


def read_model_meta(path: Path) -> dict[str, Any]:
    """The dgmerge metadata of a saved model; an error naming the file if there is none."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from exc
    if META_KEY not in meta:
        raise ValueError(f"{path} has no dgmerge metadata (was it written by `dgmerge train` or `dgmerge demo`?); "
                         "pass --like with a model that has it to borrow its architecture")
    return json.loads(meta[META_KEY])


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
