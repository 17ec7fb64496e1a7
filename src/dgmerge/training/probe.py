"""Linear-probe head: logistic regression on frozen encoder features.

For ImageNet backbones this head plays the role of CLIP's text head: fitted once on the
pooled source training splits, then frozen and shared by every fine-tuned model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from dgmerge.config import ProbeConfig
from dgmerge.device import module_device
from dgmerge.progress import progress


@torch.no_grad()
def extract_features(encoder: nn.Module, dataset: Dataset, batch_size: int = 128,
                     num_workers: int = 0, desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder features (on the encoder's device) and labels of every item of `dataset`, in order."""
    was_training = encoder.training
    encoder.eval()
    device = module_device(encoder)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    feats, labels = [], []
    for images, targets in progress(loader, desc=desc, total=len(loader)):
        feats.append(encoder(images.to(device, non_blocking=True)).float())
        labels.append(torch.as_tensor(targets))
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     cfg: ProbeConfig, seed: int) -> nn.Linear:
    """Train a linear classifier on fixed features with AdamW; returns the fitted layer.

    It trains on the features' device; the seeded initialisation is drawn on the CPU first, so
    the head depends on `seed` alone whatever the device.
    """
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features {tuple(features.shape)} and labels {tuple(labels.shape)} do not match")
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(features.shape[1], num_classes)
    with torch.no_grad():
        # Seeded init instead of the global RNG, so the head depends on `seed` alone.
        bound = 1.0 / features.shape[1] ** 0.5
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.zero_()
    head.to(features.device)
    labels = labels.to(features.device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, -(-len(features) // cfg.batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps_per_epoch)
    loader = DataLoader(list(zip(features, labels)), batch_size=cfg.batch_size, shuffle=True,
                        generator=generator)
    for _ in range(cfg.epochs):
        for batch_feats, batch_labels in loader:
            loss = F.cross_entropy(head(batch_feats), batch_labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    head.requires_grad_(False)
    return head
