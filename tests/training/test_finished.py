"""A finished HAM training written to disk reads back whole, and a bad file is named."""

import pytest
import torch

from dgmerge.merging import MergedState
from dgmerge.training.finished import read_finished, save_finished
from dgmerge.training.ham import HamResult


def result() -> HamResult:
    state = {"w": torch.tensor([1.0, 2.0])}
    return HamResult(merged_state=MergedState({"w": torch.tensor([1.5, 2.5])}, info={"threshold": torch.tensor(0.25)}),
                     merged_from="historical", sources=["a", "b"], trainable=["w"],
                     final_states={"a": state, "b": state}, historical_states=None,
                     best_states={"a": {"w": torch.zeros(2)}, "b": state}, best_steps={"a": 2, "b": 4},
                     best_val_accs={"a": 0.5, "b": 0.75}, history=[{"step": 1, "borrowed": 3.0}], wall_time_s=12.5)


def test_a_saved_training_reads_back_with_its_key(tmp_path):
    path = tmp_path / "ham.ham-finished.pt"
    save_finished(path, result(), {"seed": 1, "ham": {"sae": True}})
    key, back = read_finished(path)
    assert key == {"seed": 1, "ham": {"sae": True}}
    want = result()
    assert torch.equal(back.merged_state["w"], want.merged_state["w"])
    assert back.merged_state.info == {"threshold": 0.25}  # tensors in the diagnostics come back as numbers
    assert back.historical_states is None and back.sources == ["a", "b"] and back.best_steps == {"a": 2, "b": 4}
    assert torch.equal(back.best_states["a"]["w"], torch.zeros(2))
    assert (back.history, back.wall_time_s, back.merged_from) == (want.history, 12.5, "historical")


def test_a_truncated_file_is_named_with_the_fix(tmp_path):
    path = tmp_path / "ham.ham-finished.pt"
    save_finished(path, result(), {})
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="ham.ham-finished.pt.*delete it to train again"):
        read_finished(path)
