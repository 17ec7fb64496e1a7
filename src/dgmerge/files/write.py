"""Writing state dicts and dgmerge classifier files, atomically.

Every write goes to a temporary file in the target folder that replaces the target only
when complete (`dgmerge.atomic`), so a crash never leaves a half-written model under the
final name for a later run to trip over.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file
from torch import Tensor

from dgmerge.atomic import atomic_write
from dgmerge.files.errors import ModelFileError
from dgmerge.files.formats import META_KEY, PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES


def check_writable(path: str | os.PathLike[str], force: bool = False) -> Path:
    """Raise ModelFileError before any work if `path` exists (without force) or has an unknown format."""
    path = Path(path)
    if path.suffix not in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES:
        raise ModelFileError(path, f"unknown output format {path.suffix!r}", "name it .safetensors or .pt")
    if path.is_dir():
        raise ModelFileError(path, "is a directory", f"give a file name such as {path / 'merged.safetensors'}")
    if path.exists() and not force:
        raise ModelFileError(path, "already exists", "pass --force (force=True) to overwrite it")
    return path


def _unshared(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous CPU tensors with no storage shared between keys (safetensors refuses aliasing)."""
    seen: set[int] = set()
    out = {}
    for key, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        if tensor.untyped_storage().data_ptr() in seen and tensor.numel() > 0:
            tensor = tensor.clone()  # tied or sliced weights
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out


def save_state_dict(path: str | os.PathLike[str], state: Mapping[str, Tensor] | torch.nn.Module, *,
                    metadata: Mapping[str, str] | None = None, force: bool = False) -> Path:
    """Write `state` (or a module's state dict) as safetensors or a torch pickle, by suffix; returns the path.

    Refuses to overwrite an existing file unless `force`. `metadata` (str -> str) goes into
    the safetensors header; a pickle has no place for it, so it is left out there (a merge
    records its method in the metadata, and `--out merged.pt` still works).
    """
    path = check_writable(path, force)
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    tensors = _unshared(state)
    with atomic_write(path) as temp:
        if path.suffix in SAFETENSORS_SUFFIXES:
            save_file(tensors, str(temp), metadata=dict(metadata) if metadata else None)
        else:
            torch.save(tensors, temp)
    return path


def save_model(path: str | os.PathLike[str], module: torch.nn.Module, meta: Mapping[str, Any]) -> Path:
    """Write a dgmerge model: `module`'s state dict as safetensors with `meta` as JSON under "dgmerge".

    `read_meta` reads `meta` back; `dgmerge evaluate` rebuilds the model from it. Replaces
    an existing file (a rerun rewrites its own outputs).
    """
    path = Path(path)
    if path.suffix not in SAFETENSORS_SUFFIXES:
        raise ModelFileError(path, "dgmerge models are safetensors files (they carry metadata)",
                             "name it .safetensors")
    return save_state_dict(path, module, metadata={META_KEY: json.dumps(dict(meta), sort_keys=True)}, force=True)
