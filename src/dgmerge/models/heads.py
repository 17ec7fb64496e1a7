"""Classification heads that sit on top of an encoder's features."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class ZeroShotHead(nn.Module):
    """logits = exp(logit_scale) · cos(features, class_embeddings).

    Class embeddings and the scale are buffers, not parameters: the head is frozen and shared
    by every fine-tuned model, so optimisers and merging methods (which walk parameters)
    never touch it, while `.to(device)` and state dicts still carry it.
    """

    def __init__(self, class_embeddings: torch.Tensor, logit_scale: float | torch.Tensor = math.log(100.0)):
        super().__init__()
        if class_embeddings.ndim != 2:
            raise ValueError(f"class_embeddings must be [num_classes, dim], got {tuple(class_embeddings.shape)}")
        embeddings = F.normalize(class_embeddings.detach().float(), dim=-1)
        self.register_buffer("class_embeddings", embeddings)
        self.register_buffer("logit_scale", torch.as_tensor(logit_scale, dtype=torch.float32).detach().reshape(()))

    @property
    def num_classes(self) -> int:
        return self.class_embeddings.shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = F.normalize(features, dim=-1)
        embeddings = self.class_embeddings.to(features.dtype)
        return self.logit_scale.exp().to(features.dtype) * features @ embeddings.t()


class LinearHead(nn.Module):
    """A linear classifier on pooled features (the non-CLIP stand-in for a text head)."""

    def __init__(self, feature_dim: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(feature_dim, num_classes)

    @property
    def num_classes(self) -> int:
        return self.linear.out_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)


def build_linear_head(feature_dim: int, num_classes: int, seed: int | None = None) -> LinearHead:
    """A LinearHead; with `seed`, initialised from that seed alone (not the global RNG)."""
    if seed is None:
        return LinearHead(feature_dim, num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LinearHead(feature_dim, num_classes)


@torch.no_grad()
def average_prompt_embeddings(encode_text, class_names: list[str], templates: list[str]) -> torch.Tensor:
    """Class embeddings [C, D]: each class's prompts encoded, normalised, averaged, renormalised.

    `encode_text(prompts) -> [len(prompts), D]`. Underscores in class names become spaces
    because dataset folder names (e.g. "tennis_racket") are not how captions spell them.
    """
    if not class_names:
        raise ValueError("a zero-shot head needs at least one class name")
    if not templates:
        raise ValueError("a zero-shot head needs at least one prompt template")
    rows = []
    for name in class_names:
        prompts = [template.replace("{}", name.replace("_", " ")) for template in templates]
        embeddings = F.normalize(encode_text(prompts).float(), dim=-1)
        rows.append(F.normalize(embeddings.mean(dim=0), dim=-1))
    return torch.stack(rows)
