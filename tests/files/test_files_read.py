"""Reading state dicts: safetensors, pickles, nested checkpoints, model directories, lazy access."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

import dgmerge.files.read as read_module
from dgmerge.files import (LazyStateDict, ModelFileError, open_state_dict, read_header, read_meta, read_metadata,
                           read_state_dict, save_model, save_state_dict, unwrap_state_dict)


def state() -> dict[str, torch.Tensor]:
    return {"a.weight": torch.arange(6.0).view(2, 3), "a.bias": torch.zeros(2, dtype=torch.float16),
            "n": torch.tensor(3), "flag": torch.tensor([True, False]), "bf": torch.ones(2, dtype=torch.bfloat16),
            "empty": torch.zeros(0, 3)}


def same(x, y) -> None:
    assert x.keys() == y.keys()
    for k in x:
        assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k


@pytest.mark.parametrize("name", ["m.safetensors", "m.pt", "m.pth", "m.bin", "m.ckpt"])
def test_round_trip(tmp_path, name):
    path = save_state_dict(tmp_path / name, state())
    same(read_state_dict(path), state())
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind


def test_safetensors_metadata_round_trips_and_keys_keep_file_order(tmp_path):
    path = save_state_dict(tmp_path / "m.safetensors", state(), metadata={"k": "v", "note": "ü"})
    assert read_metadata(path) == {"k": "v", "note": "ü"}
    header = read_header(path)
    offsets = [entry.begin for entry in header.tensors.values()]
    assert offsets == sorted(offsets) and list(read_state_dict(path)) == list(header.tensors)


def test_open_clip_style_checkpoint_is_unwrapped(tmp_path):
    torch.save({"epoch": 3, "name": "run", "state_dict": {"module." + k: v for k, v in state().items()},
                "optimizer": {"state": {}}}, tmp_path / "epoch_3.pt")
    same(read_state_dict(tmp_path / "epoch_3.pt"), state())


def test_unwrap_nested_mappings_and_modules():
    assert set(unwrap_state_dict({"model": {"model_state_dict": {"a": torch.zeros(1)}}}, "x.pt")) == {"a"}
    module = torch.nn.Linear(2, 1)
    assert set(unwrap_state_dict(module, "m")) == {"weight", "bias"}
    with pytest.raises(ModelFileError, match=r"^x\.pt: entries \['lr'\] are not tensors; save only"):
        unwrap_state_dict({"lr": 0.1}, "x.pt")
    with pytest.raises(ModelFileError, match=r"^x\.pt: holds a list, not a state dict"):
        unwrap_state_dict([torch.zeros(1)], "x.pt")


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"])
def test_model_directories(tmp_path, filename):
    save_state_dict(tmp_path / filename, state())
    (tmp_path / "config.json").write_text("{}")
    same(read_state_dict(tmp_path), state())


def test_sharded_index(tmp_path):
    save_file({"a.weight": state()["a.weight"]}, tmp_path / "model-1.safetensors")
    save_file({"n": state()["n"]}, tmp_path / "model-2.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a.weight": "model-1.safetensors", "n": "model-2.safetensors"}}')
    assert set(read_state_dict(tmp_path)) == {"a.weight", "n"}
    (tmp_path / "bad.index.json").write_text('{"metadata": {}}')
    with pytest.raises(ModelFileError, match=r"bad\.index\.json: shard index has no weight_map"):
        read_state_dict(tmp_path / "bad.index.json")


def test_pickles_with_code_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))

    torch.save({"w": torch.ones(1), "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ModelFileError, match=r"evil\.pt: refused to unpickle .*weights_only=True"):
        read_state_dict(tmp_path / "evil.pt")


@pytest.mark.parametrize("content", [b"", b"not a pickle at all", b"PK\x03\x04 broken zip"])
def test_damaged_pickles_name_the_file(tmp_path, content):
    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(ModelFileError) as info:
        read_state_dict(tmp_path / "bad.pt")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'bad.pt'}: ") and "\n" not in message


def test_other_bad_inputs_name_the_file(tmp_path):
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ModelFileError, match=r"w\.npz: unknown checkpoint format '\.npz'; use \.safetensors"):
        read_state_dict(tmp_path / "w.npz")
    torch.save({"w": torch.ones(1), "step": 3}, tmp_path / "mixed.pt")
    with pytest.raises(ModelFileError, match=r"mixed\.pt: entries \['step'\] are not tensors"):
        read_state_dict(tmp_path / "mixed.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="empty: directory holds none of model.safetensors"):
        read_state_dict(tmp_path / "empty")


def test_lazy_state_dict_matches_eager_and_reads_shapes_from_the_header(tmp_path):
    path = save_state_dict(tmp_path / "m.safetensors", state(), metadata={"k": "v"})
    lazy = open_state_dict(path)
    assert isinstance(lazy, LazyStateDict)
    same(dict(lazy.items()), read_state_dict(path))
    assert lazy.meta("a.weight") == (torch.Size([2, 3]), torch.float32)
    assert lazy.meta("bf") == (torch.Size([2]), torch.bfloat16)
    assert lazy.metadata == {"k": "v"} and len(lazy) == len(state()) and "n" in lazy and "zz" not in lazy
    with pytest.raises(KeyError):
        lazy["zz"]
    assert not isinstance(open_state_dict(save_state_dict(tmp_path / "m.pt", state())), LazyStateDict)


def test_lazy_access_reads_only_the_tensor_asked_for(tmp_path, monkeypatch):
    path = save_state_dict(tmp_path / "m.safetensors", state())
    read = []
    real = read_module._get_tensor
    monkeypatch.setattr(read_module, "_get_tensor", lambda p, handle, key: read.append(key) or real(p, handle, key))
    lazy = LazyStateDict(path)
    assert read == [] and lazy.meta("n") == (torch.Size([]), torch.int64)  # header only
    assert torch.equal(lazy["a.weight"], state()["a.weight"])
    assert read == ["a.weight"]


def test_lazy_tensor_outlives_the_closed_file(tmp_path):
    # Each access copies its tensor out of the mapped file and closes it again.
    path = save_state_dict(tmp_path / "m.safetensors", {"w": torch.arange(4.0)})
    tensor = LazyStateDict(path)["w"]
    save_state_dict(path, {"w": torch.zeros(4)}, force=True)
    assert tensor.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_read_meta_round_trips_save_model_and_names_files_without_it(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = save_model(tmp_path / "m.safetensors", model, {"method": "erm", "classes": ["a", "b"]})
    assert read_meta(path) == {"method": "erm", "classes": ["a", "b"]}
    same(read_state_dict(path), model.state_dict())
    bare = save_state_dict(tmp_path / "bare.safetensors", state())
    with pytest.raises(ModelFileError, match=r"bare\.safetensors: has no dgmerge metadata .*pass --like"):
        read_meta(bare)
    broken = save_state_dict(tmp_path / "broken.safetensors", state(), metadata={"dgmerge": "{not json"})
    with pytest.raises(ModelFileError, match=r"broken\.safetensors: dgmerge metadata is not valid JSON"):
        read_meta(broken)
