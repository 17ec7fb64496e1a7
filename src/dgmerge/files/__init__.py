"""Model files: the one reader and writer of state dicts and dgmerge classifier files.

    from dgmerge.files import read_state_dict, save_state_dict, ModelFileError
    state = read_state_dict("model.safetensors")       # or .pt/.bin, or a HF/open_clip directory
    save_state_dict("merged.safetensors", state, metadata={"note": "..."}, force=True)

The bottom layer of dgmerge: it imports only the standard library, torch, safetensors and
`dgmerge.atomic`. Every failure is a `ModelFileError` (a ValueError) whose one-line message
names the file and says what to do.
"""

from dgmerge.files.errors import ModelFileError, ModelFileMissing
from dgmerge.files.formats import DIRECTORY_FILES, META_KEY, PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES
from dgmerge.files.header import SafetensorsHeader, TensorEntry, read_header
from dgmerge.files.read import (LazyStateDict, StateDict, open_state_dict, read_meta, read_metadata,
                                read_state_dict, unwrap_state_dict)
from dgmerge.files.write import check_writable, save_model, save_state_dict

__all__ = [
    "DIRECTORY_FILES", "META_KEY", "PICKLE_SUFFIXES", "SAFETENSORS_SUFFIXES", "LazyStateDict",
    "ModelFileError", "ModelFileMissing", "SafetensorsHeader", "StateDict", "TensorEntry", "check_writable",
    "open_state_dict", "read_header", "read_meta", "read_metadata", "read_state_dict", "save_model",
    "save_state_dict", "unwrap_state_dict",
]
