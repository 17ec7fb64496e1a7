"""The loader registry and the classifier convenience."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError

from dgmerge.config import BackboneConfig
from dgmerge.models import LOADERS, Classifier, build_classifier, build_linear_head, load_backbone, register_loader


def test_config_kinds_are_the_registered_loaders():
    assert {BackboneConfig(kind=kind).kind for kind in LOADERS} == set(LOADERS)
    with pytest.raises(ValidationError, match=f"registered: {', '.join(sorted(LOADERS))}"):
        BackboneConfig(kind="nope")


def test_loaders_take_any_object_with_the_spec_attributes():
    # models does not import the config package: a plain record with BackboneSpec's attributes will do.
    spec = SimpleNamespace(kind="tiny_cnn", name="micro", pretrained=None, checkpoint=None, model_kwargs={"seed": 1},
                           templates=[], mean=None, std=None, image_size=32)
    backbone = load_backbone(spec)
    assert (backbone.feature_dim, backbone.image_size) == (32, 32)


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
