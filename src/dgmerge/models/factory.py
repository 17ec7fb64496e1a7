"""The loader registry: `load_backbone(cfg)` is a lookup of `cfg.kind` in LOADERS."""

from __future__ import annotations

from typing import Callable

from torch import nn

from dgmerge.models.backbone import Backbone, BackboneSpec
from dgmerge.models.classifier import Classifier

Loader = Callable[[BackboneSpec], Backbone]

# kind -> loader; filled by @register_loader in the loader modules that models/__init__ imports.
LOADERS: dict[str, Loader] = {}


def register_loader(kind: str) -> Callable[[Loader], Loader]:
    """Decorator adding a `BackboneSpec -> Backbone` loader for `kind` to LOADERS."""

    def add(loader: Loader) -> Loader:
        if kind in LOADERS and LOADERS[kind] is not loader:
            raise ValueError(f"a backbone loader for kind {kind!r} is already registered: {LOADERS[kind]}")
        LOADERS[kind] = loader
        return loader

    return add


def load_backbone(cfg: BackboneSpec) -> Backbone:
    """Build the backbone that `cfg` describes, with the loader registered for `cfg.kind`."""
    try:
        loader = LOADERS[cfg.kind]
    except KeyError:
        raise ValueError(f"no backbone loader for kind {cfg.kind!r}; known: {', '.join(sorted(LOADERS))}") from None
    return loader(cfg)


def build_classifier(backbone: Backbone, head: nn.Module, freeze_norm_stats: bool = True) -> Classifier:
    """Classifier = backbone.encoder followed by `head` (shares the encoder, does not copy it)."""
    return Classifier(backbone.encoder, head, freeze_norm_stats=freeze_norm_stats)
