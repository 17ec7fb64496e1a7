"""Weight files: reading, unwrapping, strict loading with named errors, atomic saving."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from dgmerge.models.io import WeightsError, load_state_file, load_strict, save_encoder, unwrap_state_dict


def test_safetensors_and_torch_files_round_trip(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    for name in ("enc.safetensors", "enc.pt"):
        path = save_encoder(tmp_path / name, model)
        loaded = load_state_file(path)
        assert set(loaded) == set(model.state_dict())
        for key, value in model.state_dict().items():
            assert torch.equal(loaded[key], value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc.pt", "enc.safetensors"]  # no temp files left


def test_nested_checkpoints_and_module_prefix_are_unwrapped(tmp_path):
    weights = {"module.0.weight": torch.ones(2, 2), "module.0.bias": torch.zeros(2)}
    torch.save({"epoch": 1, "state_dict": weights, "optimizer": {"lr": 0.1}}, tmp_path / "ckpt.pt")
    assert set(load_state_file(tmp_path / "ckpt.pt")) == {"0.weight", "0.bias"}
    assert set(unwrap_state_dict({"model": {"a": torch.zeros(1)}})) == {"a"}
    with pytest.raises(WeightsError, match="no tensors"):
        unwrap_state_dict({"lr": 0.1})


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        load_state_file(tmp_path / "nowhere.safetensors")
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="broken.safetensors"):
        load_state_file(bad)


def test_strict_load_lists_missing_unexpected_and_misshaped_keys(tmp_path):
    model = nn.Linear(3, 2)
    save_file({"weight": torch.zeros(2, 4), "extra": torch.zeros(1)}, tmp_path / "w.safetensors")
    with pytest.raises(WeightsError) as info:
        load_strict(model, load_state_file(tmp_path / "w.safetensors"), source=str(tmp_path / "w.safetensors"))
    message = str(info.value)
    assert "w.safetensors" in message and "missing keys (1): bias" in message
    assert "unexpected keys (1): extra" in message and "weight (2, 4) != (2, 3)" in message
