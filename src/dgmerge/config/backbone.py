"""The backbone section: which image encoder to build and where its weights come from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from dgmerge.config.base import StrictModel
from dgmerge.models import LOADERS
from dgmerge.models.entries import TFLITE_MOBILENETV2, find_pretrained, shared_dir


class BackboneConfig(StrictModel):
    """Which image encoder to build and where its weights come from.

    Satisfies `dgmerge.models.BackboneSpec`, the attributes every backbone loader reads.
    """

    # A kind with a registered backbone loader (dgmerge.models.LOADERS).
    kind: str = "timm"
    # open_clip: model name (ViT-B-16); hf_clip: hub id or local directory;
    # timm: model name (mobilenetv2_100); tiny_cnn: width tag ("tiny").
    name: str = "mobilenetv2_100"
    # open_clip: pretrained tag (openai) or a local checkpoint file. timm: a pretrained entry of
    # `name` (tflite_in1k for mobilenetv2_100, see dgmerge.models.entries) whose preprocessing and
    # model_kwargs apply unless set here, "hub" for timm's own weights (needs internet), or a file.
    pretrained: str | None = None
    # A local weights file (timm / tiny_cnn state dict, open_clip checkpoint); overrides hubs.
    checkpoint: Path | None = None
    # Extra keyword arguments for the model constructor (e.g. timm's pad_type="same").
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    # Prompt templates for CLIP zero-shot heads; "{}" is replaced by the class name.
    templates: list[str] = Field(default_factory=lambda: ["a photo of a {}."])
    # Input normalisation override (mean, std); None = the pretrained entry's or the model's own.
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    image_size: int | None = Field(default=None, gt=0)

    @field_validator("kind")
    @classmethod
    def _registered_kind(cls, value: str) -> str:
        if value not in LOADERS:
            raise ValueError(f"no backbone loader for kind {value!r}; registered: {', '.join(sorted(LOADERS))}")
        return value

    @field_validator("templates")
    @classmethod
    def _templates_have_slot(cls, value: list[str]) -> list[str]:
        for template in value:
            if "{}" not in template:
                raise ValueError(f"prompt template {template!r} has no '{{}}' slot for the class name")
        return value


def architecture_only(cfg: BackboneConfig) -> BackboneConfig:
    """`cfg` without its weights (no checkpoint, no pretrained download), keeping what the weights need.

    Rebuilding a saved model takes every weight from its file; a pretrained entry's settings
    (e.g. the TF MobileNetV2's "same" padding and [-1, 1] inputs) still shape the network and
    its preprocessing, so they are written into the config before the entry is dropped.
    """
    update: dict[str, Any] = {"checkpoint": None, "pretrained": None}
    entry = find_pretrained(cfg.name, cfg.pretrained) if cfg.kind == "timm" else None
    if entry is not None:
        update.update(model_kwargs={**entry.model_kwargs, **cfg.model_kwargs}, mean=cfg.mean or entry.mean,
                      std=cfg.std or entry.std, image_size=cfg.image_size or entry.image_size)
    return cfg.model_copy(update=update)


def shared_mobilenetv2_config(path: str | os.PathLike[str] | None = None) -> BackboneConfig:
    """BackboneConfig for shared/'s TF-converted ImageNet MobileNetV2 (default: found via shared_dir()).

    Its preprocessing and padding come with the pretrained entry (tflite_in1k).
    """
    if path is None:
        root = shared_dir()
        if root is None:
            raise FileNotFoundError("cannot find the shared/ folder; set DGMERGE_SHARED or pass the weights path")
        path = root / str(TFLITE_MOBILENETV2.file)
    return BackboneConfig(kind="timm", name=TFLITE_MOBILENETV2.model, pretrained=TFLITE_MOBILENETV2.tag,
                          checkpoint=Path(path))


__all__ = ["BackboneConfig", "shared_mobilenetv2_config"]
