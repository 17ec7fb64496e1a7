"""What a loader takes (BackboneSpec) and returns (Backbone): an image encoder plus what it needs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

# (class names, prompt templates) -> head mapping encoder features to logits.
HeadBuilder = Callable[[list[str], list[str]], nn.Module]


class BackboneSpec(Protocol):
    """What a backbone loader reads: the attributes of `dgmerge.config.BackboneConfig`.

    Loaders take any object with these attributes, so models need not import the config
    package (which sits above them); None means "the loader's or the weights' own value".
    """

    @property
    def kind(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def pretrained(self) -> str | None: ...
    @property
    def checkpoint(self) -> Path | None: ...
    @property
    def model_kwargs(self) -> Mapping[str, Any]: ...
    @property
    def templates(self) -> Sequence[str]: ...
    @property
    def mean(self) -> tuple[float, float, float] | None: ...
    @property
    def std(self) -> tuple[float, float, float] | None: ...
    @property
    def image_size(self) -> int | None: ...


@dataclass
class Backbone:
    """An image encoder with its preprocessing and structure.

    encoder: maps a batch of preprocessed images [B, 3, H, W] to features [B, feature_dim].
    blocks: names of the encoder's sequential stages (as in `encoder.named_modules()`),
        input to output; `last:N` trains the last N of them (plus anything after them,
        such as a final norm or projection, listed in `tail`).
    text_head: builds a frozen zero-shot head from class names (CLIP only, else None).
    """

    kind: str
    name: str
    encoder: nn.Module
    feature_dim: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    blocks: list[str]
    tail: list[str] = field(default_factory=list)
    text_head: HeadBuilder | None = None
    # The encoder's own eval preprocessing (PIL image -> tensor).
    eval_transform: Callable | None = None

    @property
    def has_text_head(self) -> bool:
        return self.text_head is not None

    def preprocessing(self) -> Callable:
        """The encoder's own eval preprocessing, or resize + center crop + normalise with its stats."""
        if self.eval_transform is not None:
            return self.eval_transform
        from dgmerge.data.transforms import eval_transform

        return eval_transform(self.image_size, self.mean, self.std)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)
