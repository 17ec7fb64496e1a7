"""Scoring a gated model per task: manual head, automatic head (argmax P), routing share; the variants."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from dgmerge.gating.evaluate import Variant, score, variants


class _Fixed(nn.Module):
    """A stand-in GatedClassifier: features = inputs; two linear heads over 2-d features."""

    def __init__(self) -> None:
        super().__init__()
        self.task_classes = [["a", "b"], ["b", "c", "a"]]
        self.heads = nn.ModuleList([nn.Linear(2, 2, bias=False), nn.Linear(2, 3, bias=False)])
        with torch.no_grad():
            self.heads[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # predicts a for x0 > x1
            self.heads[1].weight.copy_(torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]]))  # b or a, never c

    def features(self, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        return x


def test_manual_auto_and_routed_by_hand():
    x = torch.tensor([[2.0, 0.0], [0.0, 2.0], [3.0, 1.0], [1.0, 3.0]])
    y = torch.tensor([0, 1, 0, 1])  # task 0's labels: a, b, a, b
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    out = score(_Fixed(), TensorDataset(x, y), probs, task=0, batch_size=3)
    # Manual: head 0 gets all four right. Auto: rows 0-1 go to head 0 (right); rows 2-3 to head 1,
    # which says "a" for x0 > x1 (row 2: right, a) and "b" otherwise (row 3: right, b).
    assert out == {"manual": 1.0, "auto": 1.0, "routed": 0.5}
    flipped = torch.tensor([0, 0, 0, 0])
    out = score(_Fixed(), TensorDataset(x, flipped), probs, task=0, batch_size=4)
    assert out["manual"] == 0.5 and out["auto"] == 0.5


def test_variants_are_the_plain_merges_then_each_base_for_every_m():
    got = variants([0, 2], ["average"])
    assert got == [Variant("average"), Variant("regmean"), Variant("task_arithmetic"),
                   Variant("average", 0), Variant("average", 2)]
    assert got[3].label == "Ours + AvgMean, m = 0" and got[1].label == "RegMean"
