"""Which file names hold which format, and where dgmerge keeps its own metadata."""

from __future__ import annotations

import torch

SAFETENSORS_SUFFIXES = (".safetensors",)
# Torch pickles; always read with weights_only=True so a checkpoint cannot run code.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Files looked up inside a model directory, in order (HF transformers, then open_clip on the hub).
DIRECTORY_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# Key of the safetensors metadata entry holding dgmerge's JSON (architecture, classes, method, ...).
META_KEY = "dgmerge"

# safetensors dtype names -> torch dtypes (those this torch build has).
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, attr) for name, attr in {
        "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
        "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
        "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
        "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    }.items() if hasattr(torch, attr)
}
