"""Strict loading of a state dict into a model: the error names the file and the bad keys."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dgmerge.files import ModelFileError, read_state_dict, save_state_dict
from dgmerge.models.fit_weights import load_strict


def test_strict_load_lists_missing_unexpected_and_misshaped_keys(tmp_path):
    model = nn.Linear(3, 2)
    path = save_state_dict(tmp_path / "w.safetensors", {"weight": torch.zeros(2, 4), "extra": torch.zeros(1)})
    with pytest.raises(ModelFileError) as info:
        load_strict(model, read_state_dict(path), source=str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: weights do not fit Linear: ") and "\n" not in message
    assert "missing keys (1): bias" in message
    assert "unexpected keys (1): extra" in message and "weight (2, 4) != (2, 3)" in message


def test_strict_load_of_a_fitting_file_copies_the_weights(tmp_path):
    source, target = nn.Linear(3, 2), nn.Linear(3, 2)
    path = save_state_dict(tmp_path / "w.pt", source)
    load_strict(target, read_state_dict(path), source=str(path))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
