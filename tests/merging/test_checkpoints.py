import os

import pytest
import torch
from safetensors.torch import save_file

from dgmerge.merging import MergeError, load_state_dict, save_state_dict
from dgmerge.merging import checkpoints
from dgmerge.merging.checkpoints import LazySafetensors


def state():
    return {"a.weight": torch.arange(6.0).view(2, 3), "a.bias": torch.zeros(2, dtype=torch.float16),
            "n": torch.tensor(3), "flag": torch.tensor([True, False])}


def same(x, y):
    assert x.keys() == y.keys()
    for k in x:
        assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k


@pytest.mark.parametrize("name", ["m.safetensors", "m.pt", "m.bin"])
def test_round_trip(tmp_path, name):
    path = save_state_dict(state(), tmp_path / name)
    same(load_state_dict(path), state())
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind


def test_open_clip_style_checkpoint_is_unwrapped(tmp_path):
    torch.save({"epoch": 3, "name": "run", "state_dict": {"module." + k: v for k, v in state().items()},
                "optimizer": {"state": {}}}, tmp_path / "epoch_3.pt")
    same(load_state_dict(tmp_path / "epoch_3.pt"), state())


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"])
def test_model_directories(tmp_path, filename):
    save_state_dict(state(), tmp_path / filename)
    (tmp_path / "config.json").write_text("{}")
    same(load_state_dict(tmp_path), state())


def test_sharded_index(tmp_path):
    save_file({"a.weight": state()["a.weight"]}, tmp_path / "model-1.safetensors")
    save_file({"n": state()["n"]}, tmp_path / "model-2.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a.weight": "model-1.safetensors", "n": "model-2.safetensors"}}')
    out = load_state_dict(tmp_path)
    assert set(out) == {"a.weight", "n"}


def test_pickles_with_code_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))

    torch.save({"w": torch.ones(1), "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(MergeError, match=r"evil.pt: refused to unpickle .*weights_only"):
        load_state_dict(tmp_path / "evil.pt")


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(MergeError, match="missing.pt: no such file"):
        load_state_dict(tmp_path / "missing.pt")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(MergeError, match=r"w.npz: unknown checkpoint format '.npz'"):
        load_state_dict(tmp_path / "w.npz")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00\x01")
    with pytest.raises(MergeError, match="broken.safetensors: not a valid safetensors"):
        load_state_dict(tmp_path / "broken.safetensors")
    torch.save({"w": torch.ones(1), "step": 3}, tmp_path / "mixed.pt")
    with pytest.raises(MergeError, match=r"mixed.pt: entries \['step'\] are not tensors"):
        load_state_dict(tmp_path / "mixed.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MergeError, match="empty: directory holds none of"):
        load_state_dict(tmp_path / "empty")


def test_refuses_overwrite_without_force(tmp_path):
    path = save_state_dict(state(), tmp_path / "m.safetensors")
    with pytest.raises(MergeError, match="already exists; pass --force"):
        save_state_dict({"x": torch.ones(1)}, path)
    save_state_dict({"x": torch.ones(1)}, path, force=True)
    assert set(load_state_dict(path)) == {"x"}
    with pytest.raises(MergeError, match="unknown output format"):
        save_state_dict(state(), tmp_path / "m.npz")


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = save_state_dict(state(), tmp_path / "m.safetensors")

    def crash(*args, **kwargs):
        open(args[1], "wb").write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(checkpoints, "save_file", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_state_dict({"x": torch.ones(1)}, path, force=True)
    same(load_state_dict(path), state())
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_shared_storage_is_saved_as_separate_tensors(tmp_path):
    base = torch.arange(4.0)
    save_state_dict({"a": base, "b": base, "c": base[:2]}, tmp_path / "s.safetensors")
    out = load_state_dict(tmp_path / "s.safetensors")
    assert out["b"].tolist() == [0.0, 1.0, 2.0, 3.0] and out["c"].tolist() == [0.0, 1.0]


def test_lazy_safetensors_matches_eager_and_reads_shapes_from_the_header(tmp_path):
    save_state_dict({**state(), "bf": torch.ones(2, dtype=torch.bfloat16), "empty": torch.zeros(0, 3)},
                    tmp_path / "m.safetensors", metadata={"k": "v"})
    lazy = LazySafetensors(tmp_path / "m.safetensors")
    eager = load_state_dict(tmp_path / "m.safetensors")
    same(dict(lazy.items()), eager)
    assert lazy.meta("a.weight") == (torch.Size([2, 3]), torch.float32)
    assert lazy.metadata == {"k": "v"}
