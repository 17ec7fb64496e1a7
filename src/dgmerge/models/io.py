"""Reading and writing weight files (safetensors or torch pickles) with clear errors."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

StateDict = dict[str, torch.Tensor]

# Checkpoints written by training scripts often wrap the weights one level down.
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module")


class WeightsError(ValueError):
    """A weights file that cannot be read or does not fit the model; the message names the file."""


def load_state_file(path: str | os.PathLike[str]) -> StateDict:
    """Read a state dict from a .safetensors file or a torch pickle (weights_only, on CPU).

    Nested checkpoints ({"state_dict": ...}) are unwrapped and DataParallel's "module."
    prefixes stripped. Raises FileNotFoundError / WeightsError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist (or is not a file)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(path), device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors and pickle raise many unrelated types
        raise WeightsError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from exc
    return unwrap_state_dict(raw, source=str(path))


def unwrap_state_dict(raw: Any, source: str = "checkpoint") -> StateDict:
    """The tensor mapping inside `raw`: unwrap {"state_dict": ...} and drop "module." prefixes."""
    if isinstance(raw, nn.Module):
        raw = raw.state_dict()
    while isinstance(raw, Mapping):
        nested = next((k for k in _NESTED_KEYS if isinstance(raw.get(k), Mapping)), None)
        if nested is None:
            break
        raw = raw[nested]
    if not isinstance(raw, Mapping) or not raw:
        raise WeightsError(f"{source} holds no state dict (got {type(raw).__name__})")
    tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"{source} holds no tensors (keys: {', '.join(list(raw)[:5])}, ...)")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def load_strict(model: nn.Module, state: StateDict, source: str) -> None:
    """`model.load_state_dict(state, strict=True)` with an error naming `source` and the bad keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
                   for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        problems = [f"{label} ({len(keys)}): {_preview(keys)}" for label, keys in
                    (("missing keys", missing), ("unexpected keys", unexpected),
                     ("shape mismatches", wrong_shape)) if keys]
        raise WeightsError(f"weights {source} do not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def save_encoder(path: str | os.PathLike[str], encoder: nn.Module | Mapping[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> Path:
    """Write an encoder's state dict atomically (.safetensors, else a torch pickle); returns the path.

    The write goes to a temporary file that replaces `path` only when complete, so a crash
    never leaves a truncated file that a later run would try to load.
    """
    path = Path(path)
    state = encoder.state_dict() if isinstance(encoder, nn.Module) else dict(encoder)
    # clone: safetensors refuses tensors that share storage (tied or sliced weights).
    state = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, temp_name, metadata=metadata)
        else:
            torch.save(state, temp_name)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def _preview(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")
