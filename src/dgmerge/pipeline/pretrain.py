"""Pretraining of the demo backbone on a separate generated domain.

Merging fine-tuned models only makes sense when they share a starting point θ0; the demo
has no hub to download one from, so it makes its own on a domain no experiment uses.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F

from dgmerge.config import BackboneConfig
from dgmerge.data.imagefolder import ImageDataset, scan_domains
from dgmerge.data.cache import InMemoryDataset
from dgmerge.files import save_state_dict
from dgmerge.models import load_backbone
from dgmerge.progress import progress
from dgmerge.training.batches import BatchStream


def pretrain_backbone(dataset_dir: Path, cfg: BackboneConfig, out_path: Path, steps: int = 300,
                      batch_size: int = 64, lr: float = 2e-3, seed: int = 0) -> Path:
    """Train `cfg`'s encoder (+ a throwaway linear head) on every image of `dataset_dir`.

    Writes the encoder's state dict (safetensors) to `out_path` and returns it.
    """
    torch.manual_seed(seed)
    backbone = load_backbone(cfg)
    index = scan_domains(dataset_dir)
    samples = [s for domain in index.domains for s in index.samples[domain]]
    # The generator already varies position, scale, rotation and colour, so the deterministic
    # eval transform suffices, and decoded images can stay in memory across steps.
    transform = backbone.preprocessing()
    data = InMemoryDataset(ImageDataset(samples, transform))
    stream = BatchStream(data, batch_size, seed=seed)
    head = torch.nn.Linear(backbone.feature_dim, len(index.classes))
    encoder = backbone.encoder.train()
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    for _ in progress(range(steps), desc="pretrain", total=steps):
        images, labels = next(stream)
        loss = F.cross_entropy(head(encoder(images)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return save_state_dict(out_path, encoder, force=True)
