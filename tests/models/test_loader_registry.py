"""The loader registry and the classifier convenience."""

from __future__ import annotations

import pytest
import torch

from dgmerge.config import BackboneConfig
from dgmerge.models import LOADERS, Classifier, build_classifier, build_linear_head, load_backbone, register_loader


def test_every_config_kind_has_a_loader():
    kinds = BackboneConfig.model_fields["kind"].annotation.__args__
    assert set(kinds) <= set(LOADERS)


def test_load_backbone_dispatches_through_the_registry(monkeypatch):
    calls = []
    real = LOADERS["tiny_cnn"]

    def spy(cfg):
        calls.append(cfg.name)
        return real(cfg)

    monkeypatch.setitem(LOADERS, "tiny_cnn", spy)
    load_backbone(BackboneConfig(kind="tiny_cnn", name="tiny"))
    assert calls == ["tiny"]


def test_register_loader_refuses_a_second_loader_for_a_kind(monkeypatch):
    monkeypatch.delitem(LOADERS, "example", raising=False)
    register_loader("example")(lambda cfg: None)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_loader("example")(lambda cfg: None)
    finally:
        LOADERS.pop("example", None)


def test_unknown_kind_is_a_clear_error():
    cfg = BackboneConfig.model_construct(kind="nope", name="x")
    with pytest.raises(ValueError, match="no backbone loader for kind 'nope'"):
        load_backbone(cfg)


def test_build_classifier_shares_the_encoder():
    backbone = load_backbone(BackboneConfig(kind="tiny_cnn", name="tiny"))
    model = build_classifier(backbone, build_linear_head(backbone.feature_dim, 5, seed=0))
    assert isinstance(model, Classifier) and model.encoder is backbone.encoder
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
