"""Shared tiny setting of the gating tests: θ0 (tiny_cnn micro) and perturbed experts."""

from __future__ import annotations

import copy

import torch
from torch import nn

from dgmerge.config import BackboneConfig
from dgmerge.gating.combine import (
    base_merge,
    build_gated,
    candidate_modules,
    candidate_similarities,
    gated_module_names,
    least_similar,
)
from dgmerge.gating.gate import new_gate
from dgmerge.models import load_backbone
from dgmerge.models.classifier import Classifier
from dgmerge.models.heads import LinearHead
from dgmerge.models.stages import Cut

TRAINED = ["blocks.2", "blocks.3"]


def experts_of(n: int = 2, classes: int = 3):
    """θ0 (tiny_cnn micro) and n experts whose blocks.2/3 and heads were perturbed differently."""
    backbone = load_backbone(BackboneConfig(kind="tiny_cnn", name="micro"))
    theta0 = Classifier(backbone.encoder, LinearHead(backbone.feature_dim, classes)).eval()
    experts = []
    for i in range(n):
        model = copy.deepcopy(theta0)
        gen = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.startswith(("encoder.blocks.2", "encoder.blocks.3", "head.")):
                    param.add_(0.3 * torch.randn(param.shape, generator=gen))
        experts.append(model)
    return backbone, theta0, experts


def trained_names(encoder: nn.Module) -> list[str]:
    return [n for n, _ in encoder.named_parameters() if n.startswith(tuple(t + "." for t in TRAINED))]


def gated_model(backbone, theta0, experts, m: int, *, gate_norms: bool = True, mode: str = "sample",
           base: str = "average", grams=None, cut: Cut | None = None):
    states = [e.state_dict() for e in experts]
    trained = trained_names(theta0.encoder)
    cands = candidate_modules(theta0.encoder, backbone.blocks, backbone.tail, trained)
    chosen = least_similar(candidate_similarities(states, cands), m)
    gated = gated_module_names(theta0.encoder, cands, chosen, trained, gate_norms)
    keys = [f"encoder.{n}" for n in trained]
    merged = base_merge(base, theta0.state_dict(), states, keys, grams=grams)
    gate = new_gate(theta0.encoder, backbone.feature_dim, len(experts), cut, trainable=[])
    heads = [e.head for e in experts]
    model = build_gated(theta0.encoder, merged, states, gated, gate, heads,
                        [["a", "b", "c"]] * len(experts), cut=cut, mode=mode)
    return model.eval(), merged, gated
