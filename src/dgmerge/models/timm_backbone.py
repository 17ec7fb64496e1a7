"""timm image encoders (ImageNet backbones) with weights from a local file or timm's hub."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from dgmerge.config import BackboneConfig
from dgmerge.models.backbone import Backbone
from dgmerge.models.factory import register_loader
from dgmerge.models.io import StateDict, WeightsError, load_state_file, load_strict
from dgmerge.models.structure import find_blocks, find_tail, resize_crop_normalize

# Classifier prefixes of common timm families; the encoder is built with num_classes=0, so
# a full ImageNet checkpoint's classifier weights have nowhere to go and are dropped.
CLASSIFIER_PREFIXES = ("classifier.", "fc.", "head.", "head.fc.", "last_linear.", "head_dist.")

SHARED_MOBILENETV2 = "weights/mobilenetv2_100_imagenet_tflite.safetensors"


@register_loader("timm")
def load_timm(cfg: BackboneConfig) -> Backbone:
    """`timm.create_model(cfg.name, num_classes=0, **cfg.model_kwargs)` as a pooled-feature encoder.

    Weights: cfg.checkpoint (or cfg.pretrained naming an existing file) is loaded strictly
    after dropping classifier keys; cfg.pretrained == "hub" downloads timm's default weights;
    otherwise the model stays randomly initialised.
    """
    import timm

    checkpoint = cfg.checkpoint
    if checkpoint is None and cfg.pretrained not in (None, "hub"):
        if not Path(cfg.pretrained).is_file():
            raise ValueError(f"timm backbone {cfg.name}: pretrained must be 'hub', a weights file or null; "
                             f"{cfg.pretrained!r} is neither 'hub' nor an existing file")
        checkpoint = Path(cfg.pretrained)
    use_hub = checkpoint is None and cfg.pretrained == "hub"
    model = timm.create_model(cfg.name, pretrained=use_hub, num_classes=0, **cfg.model_kwargs)
    if checkpoint is not None:
        state = drop_classifier_keys(load_state_file(checkpoint), model)
        load_strict(model, state, source=str(checkpoint))
    model.eval()

    pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    mean = tuple(cfg.mean or pretrained_cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.std or pretrained_cfg.get("std", (0.229, 0.224, 0.225)))
    image_size = cfg.image_size or int(pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    blocks, last = find_blocks(model)
    return Backbone(
        kind="timm", name=cfg.name, encoder=model, feature_dim=int(model.num_features),
        image_size=image_size, mean=mean, std=std, blocks=blocks, tail=find_tail(model, last),
        eval_transform=resize_crop_normalize(image_size, mean, std,
                                             pretrained_cfg.get("interpolation", "bilinear")),
    )


def drop_classifier_keys(state: StateDict, model: nn.Module) -> StateDict:
    """`state` without the classifier weights that a num_classes=0 `model` has no place for.

    Only keys the model does not have are dropped, so a genuine mismatch elsewhere still
    fails the strict load.
    """
    expected = model.state_dict().keys()
    configured = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    configured = (configured,) if isinstance(configured, str) else tuple(configured)
    prefixes = tuple(f"{c}." for c in configured) + CLASSIFIER_PREFIXES
    return {k: v for k, v in state.items() if k in expected or not k.startswith(prefixes)}


def shared_dir() -> Path | None:
    """The project's shared/ folder: $DGMERGE_SHARED, else the repository's sibling "shared"."""
    env = os.environ.get("DGMERGE_SHARED")
    if env:
        return Path(env)
    # src/dgmerge/models/timm_backbone.py -> repository root is parents[3]; shared/ sits beside it.
    candidate = Path(__file__).resolve().parents[3].parent / "shared"
    return candidate if candidate.is_dir() else None


def shared_mobilenetv2_config(path: str | os.PathLike[str] | None = None) -> BackboneConfig:
    """BackboneConfig for shared/'s TF-converted ImageNet MobileNetV2 (default: found via shared_dir()).

    The TFLite weights need TensorFlow "same" padding and inputs scaled to [-1, 1].
    """
    if path is None:
        root = shared_dir()
        if root is None:
            raise WeightsError("cannot find the shared/ folder; set DGMERGE_SHARED or pass the weights path")
        path = root / SHARED_MOBILENETV2
    return BackboneConfig(
        kind="timm", name="mobilenetv2_100", checkpoint=Path(path), model_kwargs={"pad_type": "same"},
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), image_size=224,
    )
