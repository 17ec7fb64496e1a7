"""benchmarks/update_norms.py: ‖θ − θ0‖₂ of a saved model, by hand on two tensors."""

import pytest
import torch
from safetensors.torch import save_file


def test_update_norm_counts_encoder_parameters_only(script, tmp_path):
    update_norms = script("update_norms")
    theta0 = {"blocks.6.conv.weight": torch.zeros(2, 2), "bn2.weight": torch.ones(3),
              "bn2.running_mean": torch.zeros(3)}
    model = {"encoder.blocks.6.conv.weight": torch.tensor([[3.0, 0.0], [0.0, 0.0]]),
             "encoder.bn2.weight": torch.tensor([1.0, 1.0, 5.0]),
             # BatchNorm statistics and the head move too, but are not the update.
             "encoder.bn2.running_mean": torch.full((3,), 100.0), "head.linear.weight": torch.ones(2, 2)}
    save_file(model, tmp_path / "erm.safetensors")
    assert update_norms.update_norm(tmp_path / "erm.safetensors", theta0) == pytest.approx(5.0)  # √(3² + 4²)

    save_file({"encoder.blocks.9.weight": torch.ones(1)}, tmp_path / "other.safetensors")
    with pytest.raises(KeyError, match="wrong --weights"):
        update_norms.update_norm(tmp_path / "other.safetensors", theta0)
