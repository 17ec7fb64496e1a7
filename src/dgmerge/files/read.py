"""Reading state dicts and dgmerge metadata: safetensors, torch pickles, sharded and model directories.

Pickles are always loaded with `torch.load(weights_only=True)`, so a checkpoint cannot run
code. Safetensors headers are validated (`header.read_header`) before the safetensors
library opens the file, so a corrupt file is a one-line ModelFileError naming it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors import safe_open
from torch import Tensor

from dgmerge.files.errors import ModelFileError, ModelFileMissing, first_line
from dgmerge.files.formats import DIRECTORY_FILES, META_KEY, PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES
from dgmerge.files.header import SafetensorsHeader, read_header

StateDict = dict[str, Tensor]

# Wrappers training scripts put around the weights (open_clip: {"epoch", "name", "state_dict", ...}).
_NESTED = ("state_dict", "model_state_dict", "model", "module")


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Any]:
    """safe_open with the library's own errors (SafetensorError, OSError, ...) as ModelFileError."""
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except Exception as err:  # safetensors raises its own error types
        raise ModelFileError(path, f"not a readable safetensors file ({first_line(err)})",
                             "re-save or re-download it") from None
    with handle:
        yield handle


def _get_tensor(path: Path, handle: Any, key: str) -> Tensor:
    try:
        return handle.get_tensor(key)
    except Exception as err:  # e.g. the file was truncated or replaced since it was opened
        raise ModelFileError(path, f"cannot read tensor {key!r} ({first_line(err)})",
                             "the file changed or is damaged; re-save it") from None


class LazyStateDict(Mapping[str, Tensor]):
    """A .safetensors file as a read-only state dict that reads each tensor when it is accessed.

    Keys, shapes and dtypes come from the validated header (`meta`, no data read). Each
    access opens the file with safe_open, copies that one tensor out and closes it again:
    safe_open maps the whole file, and every page touched through a map that stays open
    counts towards the process's memory, so holding the map across a merge of N models
    would cost N models of RSS. This way only the tensors currently held count.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.header: SafetensorsHeader = read_header(self.path)
        self.metadata: dict[str, str] = self.header.metadata
        with _opened(self.path):  # let the library check what the header check does not (e.g. gaps)
            pass

    def meta(self, key: str) -> tuple[torch.Size, torch.dtype]:
        """Shape and dtype of `key` from the header (no data read)."""
        entry = self.header.tensors[key]
        return entry.shape, entry.dtype

    def __getitem__(self, key: str) -> Tensor:
        if key not in self.header.tensors:
            raise KeyError(key)
        with _opened(self.path) as handle:
            return _get_tensor(self.path, handle, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.header.tensors)

    def __len__(self) -> int:
        return len(self.header.tensors)


def unwrap_state_dict(raw: Any, source: str | os.PathLike[str]) -> StateDict:
    """The tensor mapping inside `raw`: unwrap {"state_dict": ...} nesting, drop "module." prefixes.

    Raises ModelFileError naming `source` if there is no mapping or it holds non-tensors.
    """
    if isinstance(raw, torch.nn.Module):
        raw = raw.state_dict()
    while isinstance(raw, Mapping) and not any(isinstance(v, Tensor) for v in raw.values()):
        inner = next((raw[k] for k in _NESTED if isinstance(raw.get(k), Mapping)), None)
        if inner is None:
            break
        raw = inner
    if not isinstance(raw, Mapping):
        raise ModelFileError(source, f"holds a {type(raw).__name__}, not a state dict",
                             "save model.state_dict() instead of the model")
    not_tensors = [str(k) for k, v in raw.items() if not isinstance(v, Tensor)]
    if not raw or not_tensors:
        found = f"entries {not_tensors[:5]} are not tensors" if not_tensors else "holds no tensors"
        raise ModelFileError(source, found, "save only model.state_dict()")
    state = {str(k): v for k, v in raw.items()}
    if all(k.startswith("module.") for k in state):  # DataParallel / DDP prefix
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _read_safetensors(path: Path) -> StateDict:
    header = read_header(path)
    with _opened(path) as handle:
        return {key: _get_tensor(path, handle, key) for key in header.tensors}


def _read_pickle(path: Path) -> StateDict:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ModelFileError(path, f"refused to unpickle non-tensor objects (weights_only=True): {first_line(err)}",
                             "re-save it as a plain state dict or as safetensors") from None
    except Exception as err:  # torch.load raises many unrelated types for damaged files
        raise ModelFileError(path, f"not a readable torch checkpoint ({type(err).__name__}: {first_line(err)})",
                             "re-save or re-download it") from None
    return unwrap_state_dict(raw, path)


def _read_index(path: Path) -> StateDict:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ModelFileError(path, f"not a JSON shard index ({first_line(err)})", "re-download the model") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    shards = sorted(set(weight_map.values())) if isinstance(weight_map, dict) else []
    if not shards:
        raise ModelFileError(path, "shard index has no weight_map", "re-download the model")
    state: StateDict = {}
    for shard in shards:
        state.update(read_state_dict(path.parent / shard))
    return state


def read_state_dict(path: str | os.PathLike[str]) -> StateDict:
    """Read a whole state dict from a file or model directory, on CPU.

    Accepts .safetensors, torch pickles (.pt/.pth/.bin/.ckpt, weights only; {"state_dict": ...}
    nesting and "module." prefixes are unwrapped, as in open_clip checkpoints), sharded
    *.index.json files, and HF / open_clip model directories (model.safetensors,
    pytorch_model.bin, ...). Raises ModelFileError naming the file (ModelFileMissing if absent).
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileMissing(path, "no such file or directory")
    if path.is_dir():
        for name in DIRECTORY_FILES:
            if (path / name).exists():
                return read_state_dict(path / name)
        raise ModelFileError(path, f"directory holds none of {', '.join(DIRECTORY_FILES)}",
                             "pass the weights file itself")
    if path.name.endswith(".index.json"):
        return _read_index(path)
    if path.suffix in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path)
    if path.suffix in PICKLE_SUFFIXES:
        return _read_pickle(path)
    raise ModelFileError(path, f"unknown checkpoint format {path.suffix!r}",
                         f"use .safetensors, {', '.join(PICKLE_SUFFIXES)} or a model directory")


def open_state_dict(path: str | os.PathLike[str]) -> Mapping[str, Tensor]:
    """Like `read_state_dict`, but a single .safetensors file is opened lazily (LazyStateDict)."""
    path = Path(path)
    if path.is_file() and path.suffix in SAFETENSORS_SUFFIXES:
        return LazyStateDict(path)
    return read_state_dict(path)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The str -> str metadata of a .safetensors file's header (no tensor data read)."""
    return read_header(path).metadata


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """dgmerge's JSON metadata (architecture, classes, method, ...) of a model file it wrote."""
    metadata = read_metadata(path)
    if META_KEY not in metadata:
        raise ModelFileError(path, "has no dgmerge metadata (was it written by `dgmerge run` or `dgmerge demo`?)",
                             "pass --like with a model that has it to borrow its architecture")
    try:
        meta = json.loads(metadata[META_KEY])
    except ValueError as err:
        raise ModelFileError(path, f"dgmerge metadata is not valid JSON ({first_line(err)})", "re-save the model") from None
    if not isinstance(meta, dict):
        raise ModelFileError(path, "dgmerge metadata is not a JSON object", "re-save the model")
    return meta
