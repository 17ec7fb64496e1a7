"""Loading a state dict into a model strictly, with an error that names the file and the bad keys."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from dgmerge.files import ModelFileError


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """`model.load_state_dict(state, strict=True)`; a mismatch is a ModelFileError naming `source`.

    The message lists the missing keys, the unexpected keys and the shape mismatches (a few
    of each), which is what tells a wrong-architecture file from a wrongly cut one.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
                   for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        problems = [f"{label} ({len(keys)}): {_preview(keys)}" for label, keys in
                    (("missing keys", missing), ("unexpected keys", unexpected),
                     ("shape mismatches", wrong_shape)) if keys]
        raise ModelFileError(source, f"weights do not fit {type(model).__name__}: " + "; ".join(problems),
                             "check that the file matches the configured architecture")
    model.load_state_dict(state, strict=True)


def _preview(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")
