"""Validating a safetensors header before anything trusts it.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON, then the
tensor data. The length comes first and is read blindly by naive parsers, so a corrupt or
foreign file can ask for terabytes (MemoryError) or hand non-JSON to the parser. Here the
length is checked against the file's size before reading, and the JSON against the format,
so every such file becomes a one-line ModelFileError naming it.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dgmerge.files.errors import ModelFileError, ModelFileMissing
from dgmerge.files.formats import SAFETENSORS_DTYPES

# The safetensors library refuses headers above 100 MB; so do we, with a clearer message.
MAX_HEADER_BYTES = 100_000_000
_HINT = "re-save or re-download it"


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives in the file and what it is, from the header alone."""

    dtype: torch.dtype
    shape: torch.Size
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header: tensors in file (data offset) order, and the str -> str metadata."""

    path: Path
    tensors: dict[str, TensorEntry] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and validate the header of a .safetensors file; no tensor data is read.

    Raises ModelFileError (one line, naming the file) for a missing, empty, too short or
    truncated file, an absurd header length, a header that is not UTF-8 JSON, and JSON
    that is not a safetensors header (wrong entries, unknown dtypes, offsets out of range).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileMissing(path, "no such file" + (" (it is a directory)" if path.is_dir() else ""))
    size = path.stat().st_size
    if size == 0:
        raise ModelFileError(path, "empty file (0 bytes), not a safetensors model", _HINT)
    if size < 8:
        raise ModelFileError(path, f"only {size} bytes, too short for a safetensors header "
                             "(an 8-byte length, then JSON)", _HINT)
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > size - 8 or length > MAX_HEADER_BYTES:
            raise ModelFileError(path, f"header length field says {length:,} bytes but the file holds "
                                 f"{size - 8:,} after it: truncated, or not a safetensors file", _HINT)
        raw = handle.read(length)
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ModelFileError(path, "header is not UTF-8 text: not a safetensors file, or corrupted", _HINT) from None
    except ValueError as err:
        raise ModelFileError(path, f"header is not valid JSON ({err.msg} at byte {err.pos}): "  # type: ignore[attr-defined]
                             "not a safetensors file, or corrupted", _HINT) from None
    return _check_layout(path, parsed, data_bytes=size - 8 - length)


def _check_layout(path: Path, parsed: Any, data_bytes: int) -> SafetensorsHeader:
    """The header JSON as entries, or a ModelFileError saying which entry breaks the format."""
    def bad(problem: str) -> ModelFileError:
        return ModelFileError(path, f"header is JSON but not a safetensors header ({problem})", _HINT)

    if not isinstance(parsed, dict):
        raise bad(f"a JSON {type(parsed).__name__}, not an object")
    metadata = parsed.get("__metadata__", {}) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad("__metadata__ must map strings to strings")
    tensors: dict[str, TensorEntry] = {}
    for name, entry in parsed.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise bad(f"entry {name!r} lacks dtype, shape or data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise bad(f"entry {name!r} has unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise bad(f"entry {name!r} has shape {shape!r}, not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise bad(f"entry {name!r} has data_offsets {offsets!r}, not [begin, end]")
        torch_dtype = SAFETENSORS_DTYPES[dtype]
        expected = math.prod(shape) * torch_dtype.itemsize
        if offsets[1] - offsets[0] != expected:
            raise bad(f"entry {name!r} spans {offsets[1] - offsets[0]} bytes, its shape and dtype need {expected}")
        if offsets[1] > data_bytes:
            raise ModelFileError(path, f"truncated: tensor {name!r} ends at byte {offsets[1]:,} of the data "
                                 f"but the file holds {data_bytes:,}", _HINT)
        tensors[name] = TensorEntry(torch_dtype, torch.Size(shape), offsets[0], offsets[1])
    ordered = dict(sorted(tensors.items(), key=lambda item: item[1].begin))
    return SafetensorsHeader(path=path, tensors=ordered, metadata=dict(metadata))
