"""Accuracy of a classifier on a dataset."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dgmerge.device import autocast, module_device
from dgmerge.progress import progress


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, batch_size: int = 128, num_workers: int = 0,
            desc: str | None = None, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and true labels of every item of `dataset`, in order, computed on the model's device."""
    was_training = model.training
    model.eval()
    # Inputs follow the model (a GPU rank in distributed training), predictions come back to the CPU.
    device = module_device(model)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    preds, labels = [], []
    for images, targets in progress(loader, desc=desc or "evaluating", total=len(loader)):
        with autocast(device, precision):
            logits = model(images.to(device, non_blocking=True))
        preds.append(logits.argmax(dim=1).cpu())
        labels.append(torch.as_tensor(targets))
    model.train(was_training)
    if not preds:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return torch.cat(preds), torch.cat(labels)


def accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 128, num_workers: int = 0,
             desc: str | None = None, precision: str = "fp32") -> float:
    """Top-1 accuracy in [0, 1]; raises on an empty dataset rather than reporting a fake 0."""
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError(f"cannot measure accuracy on an empty dataset ({desc or 'unnamed'})")
    preds, labels = predict(model, dataset, batch_size, num_workers, desc, precision)
    return (preds == labels).float().mean().item()
