"""Helpers of the resume tests: a checkpointer that dies after a save, and tiny 2-D domains."""

import torch
from torch import nn
from torch.utils.data import TensorDataset

from dgmerge.models.classifier import Classifier
from dgmerge.training.checkpoint import Checkpointer


class Killed(Exception):
    pass


class KillAfterSave(Checkpointer):
    """Saves like a Checkpointer, then dies at `kill_step`, as a SIGKILL after the save would."""

    def __init__(self, path, every, kill_step):
        super().__init__(path, every)
        self.kill_step = kill_step

    def save(self, payload):
        super().save(payload)
        if payload["step"] == self.kill_step:
            raise Killed


def domain(seed: int, n: int = 20, shift: float = 0.0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centers = torch.tensor([[2.0, 0.0], [0.0, 2.0], [-2.0, -2.0]])
    return TensorDataset(centers[labels] + shift + 0.7 * torch.randn(n, 2, generator=g), labels)


def theta0() -> Classifier:
    torch.manual_seed(0)
    # Dropout draws from the global generator: observers' validation passes must not shift it.
    encoder = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 4))
    head = nn.Linear(4, 3)
    head.requires_grad_(False)
    return Classifier(encoder, head)
