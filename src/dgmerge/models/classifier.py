"""Classifier = image encoder + head, and the rule for which of its parameters train."""

from __future__ import annotations

import torch
from torch import nn

from dgmerge.models.backbone import Backbone
from dgmerge.models.stages import Cut, run_from

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)


class Classifier(nn.Module):
    """logits = head(encoder(x)).

    BatchNorm statistics stay frozen in train mode by default: the per-domain models must
    share θ0 for merging, and re-estimating running stats on one small domain moves the
    buffers away from it (and breaks BN-folded weights such as ../shared's MobileNetV2).
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, freeze_norm_stats: bool = True):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.freeze_norm_stats = freeze_norm_stats
        # Set when inputs are cached activations at a block rather than images (see stages.py).
        self.cut: Cut | None = None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.cut is not None:
            return self.head(run_from(self.encoder, self.cut, inputs))
        return self.head(self.encoder(inputs))

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if mode and self.freeze_norm_stats:
            for module in self.modules():
                if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
                    module.eval()
        return self


def trainable_encoder_names(encoder: nn.Module, backbone: Backbone, spec: str) -> list[str]:
    """Names of the encoder parameters that `spec` trains (all | none | norms_biases | last:N)."""
    names = [name for name, _ in encoder.named_parameters()]
    if spec == "all":
        return names
    if spec == "none":
        return []
    if spec == "norms_biases":
        norm_params = {
            f"{mod_name}.{p_name}" if mod_name else p_name
            for mod_name, module in encoder.named_modules()
            if isinstance(module, NORM_TYPES)
            for p_name, _ in module.named_parameters(recurse=False)
        }
        return [n for n in names if n in norm_params or n.endswith("bias")]
    if spec.startswith("last:"):
        count = int(spec.split(":", 1)[1])
        if count > len(backbone.blocks):
            raise ValueError(
                f"trainable=last:{count} but backbone {backbone.name} has only "
                f"{len(backbone.blocks)} blocks ({', '.join(backbone.blocks)})"
            )
        prefixes = backbone.blocks[len(backbone.blocks) - count:] + list(backbone.tail)
        return [n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)]
    raise ValueError(f"unknown trainable spec {spec!r}: use all, none, norms_biases or last:N")


def trainable_names(model: Classifier, backbone: Backbone, spec: str, train_head: bool = False) -> list[str]:
    """State-dict names of the parameters `spec` (and `train_head`) would train, in model order.

    Pure: the model is not touched, so callers that only need the names need no copy.
    """
    chosen = set(trainable_encoder_names(model.encoder, backbone, spec))
    return [n for n, _ in model.named_parameters()
            if (n.startswith("encoder.") and n.removeprefix("encoder.") in chosen)
            or (train_head and n.startswith("head."))]


def set_trainable(model: Classifier, backbone: Backbone, spec: str, train_head: bool = False) -> list[str]:
    """Freeze everything except the parameters `spec` selects; returns the trainable names."""
    names = trainable_names(model, backbone, spec, train_head)
    chosen = set(names)
    for name, param in model.named_parameters():
        param.requires_grad_(name in chosen)
    return names
