"""Reading and writing state dicts: safetensors, torch pickles (weights only), open_clip, HF dirs.

Pickles are always loaded with `torch.load(weights_only=True)`, so a checkpoint cannot run
code. Writes go to a temporary file in the target directory and are moved into place with
`os.replace`, so a crash never leaves a half-written model under the final name.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from dgmerge.merging.validate import MergeError

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)
# Files looked up inside a model directory, in order (HF transformers, then open_clip on the hub).
DIRECTORY_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# Wrappers training scripts put around the weights (open_clip: {"epoch", "name", "state_dict", ...}).
_NESTED = ("state_dict", "model_state_dict", "model", "module")


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class LazySafetensors(Mapping[str, Tensor]):
    """A safetensors file as a read-only state dict that reads each tensor when it is accessed.

    Reads use plain file I/O (no mmap), so only the tensors currently held count towards the
    process's memory; merging N such models needs about one model's memory for the output
    instead of N. Shapes and dtypes come from the header without reading data (`meta`).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
        except (OSError, struct.error, ValueError, UnicodeDecodeError) as err:
            raise MergeError(f"{self.path}: not a valid safetensors file ({err})") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self._start = 8 + size
        self._entries = header
        unknown = sorted({e["dtype"] for e in header.values()} - set(_SAFETENSORS_DTYPES))
        if unknown:
            raise MergeError(f"{self.path}: unsupported tensor dtypes {unknown}")

    def meta(self, key: str) -> tuple[torch.Size, torch.dtype]:
        """Shape and dtype of `key` from the header (no data read)."""
        entry = self._entries[key]
        return torch.Size(entry["shape"]), _SAFETENSORS_DTYPES[entry["dtype"]]

    def __getitem__(self, key: str) -> Tensor:
        entry = self._entries[key]
        shape, dtype = self.meta(key)
        begin, end = entry["data_offsets"]
        if end == begin:
            return torch.empty(shape, dtype=dtype)
        buffer = bytearray(end - begin)
        with open(self.path, "rb") as f:
            f.seek(self._start + begin)
            if f.readinto(buffer) != len(buffer):
                raise MergeError(f"{self.path}: truncated file (tensor {key!r} is incomplete)")
        return torch.frombuffer(buffer, dtype=dtype).reshape(shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def open_state_dict(path: str | os.PathLike) -> Mapping[str, Tensor]:
    """Like `load_state_dict`, but a single .safetensors file is opened lazily (LazySafetensors)."""
    path = Path(path)
    if path.is_file() and path.suffix in SAFETENSORS_SUFFIXES:
        return LazySafetensors(path)
    return load_state_dict(path)


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    while isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _NESTED if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise MergeError(f"{path}: holds a {type(obj).__name__}, not a state dict; save model.state_dict()")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise MergeError(f"{path}: entries {not_tensors[:5]} are not tensors; save only model.state_dict()")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):  # DataParallel / DDP prefix
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _load_pickle(path: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise MergeError(f"{path}: refused to unpickle non-tensor objects (weights_only=True): "
                         f"{str(err).splitlines()[0][:120]}; re-save it as a plain state dict or safetensors") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise MergeError(f"{path}: not a readable torch checkpoint ({str(err).splitlines()[0][:120]})") from None
    return _unwrap(obj, path)


def _load_index(path: Path) -> dict[str, Tensor]:
    index = json.loads(path.read_text())
    shards = sorted(set(index.get("weight_map", {}).values()))
    if not shards:
        raise MergeError(f"{path}: index has no weight_map")
    state: dict[str, Tensor] = {}
    for shard in shards:
        state.update(load_state_dict(path.parent / shard))
    return state


def load_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Load a state dict from a file or model directory on CPU.

    Accepts .safetensors, .pt/.pth/.bin/.ckpt (weights only; nested under "state_dict" and
    "module." prefixes are unwrapped, as in open_clip checkpoints), sharded index files, and
    HF / open_clip model directories (model.safetensors, pytorch_model.bin, ...).
    """
    path = Path(path)
    if not path.exists():
        raise MergeError(f"{path}: no such file or directory")
    if path.is_dir():
        for name in DIRECTORY_FILES:
            if (path / name).exists():
                return load_state_dict(path / name)
        raise MergeError(f"{path}: directory holds none of {', '.join(DIRECTORY_FILES)}")
    if path.name.endswith(".index.json"):
        return _load_index(path)
    if path.suffix in SAFETENSORS_SUFFIXES:
        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types
            raise MergeError(f"{path}: not a valid safetensors file ({str(err).splitlines()[0][:120]})") from None
    if path.suffix in PICKLE_SUFFIXES:
        return _load_pickle(path)
    raise MergeError(f"{path}: unknown checkpoint format {path.suffix!r}; use .safetensors, "
                     f"{', '.join(PICKLE_SUFFIXES)} or a model directory")


def _unshared(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous tensors with no storage shared between keys (safetensors refuses aliasing)."""
    seen: set[int] = set()
    out = {}
    for key, tensor in state.items():
        tensor = tensor.detach().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen and tensor.numel() > 0:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out


def check_writable(path: str | os.PathLike, force: bool = False) -> Path:
    """Raise before any work if `path` exists (without force) or has an unknown format."""
    path = Path(path)
    if path.suffix not in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES:
        raise MergeError(f"{path}: unknown output format {path.suffix!r}; name it .safetensors or .pt")
    if path.is_dir():
        raise MergeError(f"{path}: is a directory; give a file name such as {path / 'merged.safetensors'}")
    if path.exists() and not force:
        raise MergeError(f"{path}: already exists; pass --force (force=True) to overwrite it")
    return path


def save_state_dict(state: Mapping[str, Tensor], path: str | os.PathLike, *, force: bool = False,
                    metadata: Mapping[str, str] | None = None) -> Path:
    """Write `state` atomically as safetensors (by suffix) or a torch pickle (.pt/.bin/...).

    Refuses to overwrite an existing file unless `force`. `metadata` (str -> str) is stored
    in the safetensors header; it is ignored for pickles.
    """
    path = check_writable(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = _unshared(state)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if path.suffix in SAFETENSORS_SUFFIXES:
            save_file(tensors, tmp, metadata=dict(metadata) if metadata else None)
        else:
            torch.save(tensors, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
