"""Data for the gating benchmarks as cached activations at the experts' cut (blocks.5 of MobileNetV2).

PACS reuses the project's feature cache: the same cache key as `dgmerge train` with the
shipped pacs_mobilenetv2 backbone config (one file per whole domain, samples in path
order), so the frozen prefix never reruns once `runs/feature_cache` holds the domains.
The digit task is scikit-learn's 8×8 digits (1,797 images, a registry package, no
download), upscaled to the backbone's 224 px and cached the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from dgmerge.config import BackboneConfig
from dgmerge.data.imagefolder import DomainIndex, ImageDataset, scan_domains
from dgmerge.data.splits import seed_hash, split_in_out
from dgmerge.models import load_backbone
from dgmerge.models.backbone import Backbone
from dgmerge.models.classifier import trainable_encoder_names
from dgmerge.models.stages import Cut, first_trainable_block
from dgmerge.training.feature_cache import (
    ActivationDataset,
    cache_key,
    cached_activations,
)

TRAINABLE = "last:2"  # blocks.5, blocks.6, conv_head, bn2: the 5 gating candidates
DIGITS = "digits"
DIGIT_CLASSES = [str(i) for i in range(10)]


def mobilenetv2_config(weights: Path) -> BackboneConfig:
    """The backbone section of the shipped pacs_mobilenetv2 config (so cache keys match the project's)."""
    return BackboneConfig(kind="timm", name="mobilenetv2_100", checkpoint=weights, model_kwargs={"pad_type": "same"},
                          mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), image_size=224)


@dataclass
class Task:
    """One task/domain: its cached activations split in/out and its class names."""

    name: str
    classes: list[str]
    train: ActivationDataset
    test: ActivationDataset


@dataclass
class Setting:
    """θ0's backbone, the cut, and every task's activations."""

    backbone_cfg: BackboneConfig
    backbone: Backbone
    cut: Cut
    trainable: list[str]
    tasks: dict[str, Task]


def load_setting(weights: Path, cache_dir: Path, *, pacs: Path | None, digits: bool, seed: int = 0,
                 holdout: float = 0.2) -> Setting:
    """Backbone, cut and tasks: each PACS domain of `pacs`, and the digits if asked.

    Each task is split in/out 80/20 with DomainBed's hashed seed (the same splits as
    `dgmerge train`); `train` is the in-split, `test` the out-split.
    """
    if not Path(weights).is_file():
        raise FileNotFoundError(f"--weights {weights}: no such file; pass the MobileNetV2 safetensors "
                                "(../shared/weights/mobilenetv2_100_imagenet_tflite.safetensors)")
    cfg = mobilenetv2_config(Path(weights))
    backbone = load_backbone(cfg)
    trainable = trainable_encoder_names(backbone.encoder, backbone, TRAINABLE)
    block = first_trainable_block(backbone.encoder, backbone.blocks, set(trainable))
    if block is None:
        raise ValueError(f"{TRAINABLE} leaves no frozen prefix in {cfg.name}")
    cut = Cut(block=block, image_size=backbone.image_size)
    tasks: dict[str, Task] = {}
    if pacs is not None:
        index = scan_domains(Path(pacs))
        for domain in index.domains:
            tasks[domain] = _pacs_task(index, domain, backbone, cfg, cut, cache_dir, seed, holdout)
    if digits:
        tasks[DIGITS] = _digits_task(backbone, cfg, cut, cache_dir, seed, holdout)
    return Setting(cfg, backbone, cut, trainable, tasks)


def _split(data: ActivationDataset, name: Any, seed: int, holdout: float) -> tuple[ActivationDataset, ActivationDataset]:
    samples = data.samples
    in_idx, out_idx = split_in_out(len(samples), holdout, seed_hash(seed, name))
    return data.select([samples[i] for i in in_idx]), data.select([samples[i] for i in out_idx])


def _pacs_task(index: DomainIndex, domain: str, backbone: Backbone, cfg: BackboneConfig, cut: Cut,
               cache_dir: Path, seed: int, holdout: float) -> Task:
    samples = sorted(index.samples[domain], key=lambda s: str(s[0]))
    data = ImageDataset(samples, backbone.preprocessing())
    key = cache_key(cfg.model_dump(mode="json"), cut, data.transform, samples, "float32")
    cached = cached_activations(backbone.encoder, cut, data, key=key, cache_dir=cache_dir, desc=f"caching {domain}")
    # DomainBed's split of this domain (seed_hash(trial seed, domain id)), as make_environments draws it.
    in_idx, out_idx = split_in_out(len(index.samples[domain]), holdout, seed_hash(seed, index.domain_id(domain)))
    original = index.samples[domain]
    return Task(domain, list(index.classes), cached.select([original[i] for i in in_idx]),
                cached.select([original[i] for i in out_idx]))


class DigitImages(Dataset):
    """scikit-learn's 8×8 digits as 3-channel images of `size` px, normalised like the backbone."""

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...]):
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
        self.labels = [int(t) for t in digits.target]
        self.samples = [(f"sklearn-digits/{i}", label) for i, label in enumerate(self.labels)]
        self.size = size
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.transform = f"sklearn digits 8x8 /16, bilinear to {size}px, 3 channels, normalised"

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        image = F.interpolate(self.images[idx][None, None], size=(self.size, self.size), mode="bilinear",
                              align_corners=False)[0].expand(3, -1, -1)
        return (image - self.mean) / self.std, self.labels[idx]


def _digits_task(backbone: Backbone, cfg: BackboneConfig, cut: Cut, cache_dir: Path, seed: int,
                 holdout: float) -> Task:
    data = DigitImages(backbone.image_size, backbone.mean, backbone.std)
    key = cache_key(cfg.model_dump(mode="json"), cut, data.transform, data.samples, "float32")
    cached = cached_activations(backbone.encoder, cut, data, key=key, cache_dir=cache_dir, desc="caching digits")
    train, test = _split(cached, DIGITS, seed, holdout)
    return Task(DIGITS, list(DIGIT_CLASSES), train, test)
