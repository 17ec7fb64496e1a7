"""Building a cell: where the frozen prefix ends, so the feature cache can start there."""

from __future__ import annotations

import pytest

from dgmerge.config import BackboneConfig, ExperimentConfig, TrainConfig
from dgmerge.methods.build import cut_for
from dgmerge.models import load_backbone


def config(trainable: str) -> ExperimentConfig:
    return ExperimentConfig(backbone=BackboneConfig(kind="timm", name="mobilenetv2_050"),
                            train=TrainConfig(trainable=trainable, feature_cache="memory"))


def test_cache_needs_a_frozen_prefix():
    # MobileNetV2's stem trains under trainable=all, so no block has a constant input.
    cfg = config("all")
    backbone = load_backbone(cfg.backbone)
    with pytest.raises(ValueError, match="frozen prefix"):
        cut_for(cfg, backbone)
    cfg.train.trainable = "last:2"
    assert cut_for(cfg, backbone).block == "blocks.5"
    cfg.data.train_augment = True
    with pytest.raises(ValueError, match="train_augment"):
        cut_for(cfg, backbone)
