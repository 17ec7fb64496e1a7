"""timm image encoders (ImageNet backbones) with weights from a local file, a pretrained entry or timm's hub."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from dgmerge.models.backbone import Backbone, BackboneSpec
from dgmerge.models.entries import find_pretrained, pretrained_tags
from dgmerge.models.factory import register_loader
from dgmerge.files import StateDict, read_state_dict
from dgmerge.models.fit_weights import load_strict
from dgmerge.models.structure import find_blocks, find_tail, resize_crop_normalize

# Classifier prefixes of common timm families; the encoder is built with num_classes=0, so
# a full ImageNet checkpoint's classifier weights have nowhere to go and are dropped.
CLASSIFIER_PREFIXES = ("classifier.", "fc.", "head.", "head.fc.", "last_linear.", "head_dist.")


@register_loader("timm")
def load_timm(cfg: BackboneSpec) -> Backbone:
    """`timm.create_model(cfg.name, num_classes=0, **model_kwargs)` as a pooled-feature encoder.

    cfg.pretrained is a pretrained entry of cfg.name (see models/entries.py: its model_kwargs,
    mean, std and image_size apply wherever cfg leaves them unset, and its weights file is used
    when cfg.checkpoint is None), "hub" (timm's own download), a weights file, or None.
    Weights from a file (cfg.checkpoint first) load strictly after dropping classifier keys;
    without a file or "hub" the model stays randomly initialised.
    """
    import timm

    entry = find_pretrained(cfg.name, cfg.pretrained)
    checkpoint = cfg.checkpoint
    if checkpoint is None and entry is not None:
        checkpoint = entry.weights_path()
    if checkpoint is None and cfg.pretrained not in (None, "hub"):
        if not Path(cfg.pretrained).is_file():
            tags = ", ".join(pretrained_tags(cfg.name)) or "none registered"
            raise ValueError(f"timm backbone {cfg.name}: pretrained must be 'hub', a pretrained entry of "
                             f"{cfg.name} ({tags}), a weights file or null; {cfg.pretrained!r} is neither "
                             "'hub', an entry nor an existing file")
        checkpoint = Path(cfg.pretrained)
    use_hub = checkpoint is None and cfg.pretrained == "hub"
    model_kwargs = {**(entry.model_kwargs if entry else {}), **cfg.model_kwargs}
    model = timm.create_model(cfg.name, pretrained=use_hub, num_classes=0, **model_kwargs)
    if checkpoint is not None:
        state = drop_classifier_keys(read_state_dict(checkpoint), model)
        load_strict(model, state, source=str(checkpoint))
    model.eval()

    # The config's value, else the entry's, else the model's own pretrained_cfg.
    pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    mean = tuple(cfg.mean or (entry and entry.mean) or pretrained_cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.std or (entry and entry.std) or pretrained_cfg.get("std", (0.229, 0.224, 0.225)))
    image_size = (cfg.image_size or (entry and entry.image_size)
                  or int(pretrained_cfg.get("input_size", (3, 224, 224))[-1]))
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
