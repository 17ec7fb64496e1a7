"""Writing: refusing to overwrite, atomic replacement, shared storage, dgmerge model files."""

from __future__ import annotations

import pytest
import torch

import dgmerge.files.write as write_module
from dgmerge.files import ModelFileError, check_writable, read_meta, read_state_dict, save_model, save_state_dict


def test_refuses_overwrite_without_force_and_unknown_formats(tmp_path):
    path = save_state_dict(tmp_path / "m.safetensors", {"x": torch.ones(2)})
    with pytest.raises(ModelFileError, match=r"m\.safetensors: already exists; pass --force \(force=True\)"):
        save_state_dict(path, {"y": torch.ones(1)})
    assert set(read_state_dict(path)) == {"x"}
    save_state_dict(path, {"y": torch.ones(1)}, force=True)
    assert set(read_state_dict(path)) == {"y"}
    with pytest.raises(ModelFileError, match=r"m\.npz: unknown output format '\.npz'; name it \.safetensors or \.pt"):
        check_writable(tmp_path / "m.npz")
    (tmp_path / "d.pt").mkdir()
    with pytest.raises(ModelFileError, match=r"d\.pt: is a directory"):
        check_writable(tmp_path / "d.pt", force=True)
    # A pickle has no header: metadata is left out, the tensors are written.
    save_state_dict(tmp_path / "m.pt", {"x": torch.ones(1)}, metadata={"k": "v"})
    assert set(read_state_dict(tmp_path / "m.pt")) == {"x"}


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = save_state_dict(tmp_path / "m.safetensors", {"x": torch.arange(3.0)})

    def crash(tensors, filename, metadata=None):
        open(filename, "wb").write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(write_module, "save_file", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_state_dict(path, {"x": torch.ones(1)}, force=True)
    assert read_state_dict(path)["x"].tolist() == [0.0, 1.0, 2.0]
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_shared_and_strided_storage_is_saved_as_separate_tensors(tmp_path):
    base = torch.arange(6.0)
    save_state_dict(tmp_path / "s.safetensors", {"a": base, "b": base, "c": base[:2], "t": base.view(2, 3).T})
    out = read_state_dict(tmp_path / "s.safetensors")
    assert out["b"].tolist() == base.tolist() and out["c"].tolist() == [0.0, 1.0]
    assert out["t"].tolist() == [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]


def test_a_module_is_saved_as_its_state_dict(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    for name in ("enc.safetensors", "enc.pt"):
        loaded = read_state_dict(save_state_dict(tmp_path / name, model))
        assert loaded.keys() == model.state_dict().keys()
        assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_save_model_replaces_its_file_and_needs_safetensors(tmp_path):
    model = torch.nn.Linear(2, 2)
    path = save_model(tmp_path / "m.safetensors", model, {"run": 1})
    save_model(path, model, {"run": 2})  # a rerun rewrites its own output
    assert read_meta(path) == {"run": 2}
    with pytest.raises(ModelFileError, match=r"m\.pt: dgmerge models are safetensors files"):
        save_model(tmp_path / "m.pt", model, {})
