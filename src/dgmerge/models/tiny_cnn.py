"""A small CNN for the CPU demo: four conv stages, global average pooling, 64-d features."""

from __future__ import annotations

import torch
from torch import nn

from dgmerge.files import read_state_dict
from dgmerge.models.backbone import Backbone, BackboneSpec
from dgmerge.models.factory import register_loader
from dgmerge.models.fit_weights import load_strict
from dgmerge.models.structure import resize_crop_normalize

# width tag (cfg.name) -> channels of the four stages
WIDTHS: dict[str, tuple[int, ...]] = {
    "tiny": (16, 32, 64, 64),
    "micro": (8, 16, 32, 32),
}
DEFAULT_IMAGE_SIZE = 64
# Default init is seeded so that two processes building the demo backbone agree on θ0.
INIT_SEED = 0


class TinyCNN(nn.Module):
    """conv3x3-BN-ReLU-maxpool stages named blocks.0..blocks.N-1, then global average pooling."""

    def __init__(self, widths: tuple[int, ...] = WIDTHS["tiny"], in_channels: int = 3):
        super().__init__()
        stages = []
        for width in widths:
            stages.append(nn.Sequential(
                nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ))
            in_channels = width
        self.blocks = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = widths[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(images)).flatten(1)


def build_tiny_cnn(name: str = "tiny", seed: int = INIT_SEED) -> TinyCNN:
    """A TinyCNN of width tag `name`, initialised from `seed` without touching the global RNG."""
    if name not in WIDTHS:
        raise ValueError(f"unknown tiny_cnn width {name!r}; known: {', '.join(WIDTHS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyCNN(WIDTHS[name])


@register_loader("tiny_cnn")
def load_tiny_cnn(cfg: BackboneSpec) -> Backbone:
    """TinyCNN with seeded init, or the state dict in cfg.checkpoint (.safetensors or .pt)."""
    unknown = set(cfg.model_kwargs) - {"seed"}
    if unknown:
        raise ValueError(f"tiny_cnn takes only model_kwargs.seed, got {sorted(unknown)}")
    model = build_tiny_cnn(cfg.name, seed=int(cfg.model_kwargs.get("seed", INIT_SEED)))
    if cfg.checkpoint is not None:
        load_strict(model, read_state_dict(cfg.checkpoint), source=str(cfg.checkpoint))
    image_size = cfg.image_size or DEFAULT_IMAGE_SIZE
    mean = tuple(cfg.mean or (0.5, 0.5, 0.5))
    std = tuple(cfg.std or (0.5, 0.5, 0.5))
    return Backbone(
        kind="tiny_cnn", name=cfg.name, encoder=model, feature_dim=model.num_features,
        image_size=image_size, mean=mean, std=std,
        blocks=[f"blocks.{i}" for i in range(len(model.blocks))], tail=[],
        eval_transform=resize_crop_normalize(image_size, mean, std),
    )
