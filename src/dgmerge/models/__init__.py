"""Backbones (image encoders) and heads.

`load_backbone(cfg)` dispatches on `cfg.kind` through the loader registry; importing this
package registers every built-in loader. Heavy libraries (open_clip, transformers) are
imported only when their loader runs. Weight files are read and written by `dgmerge.files`.
"""

from dgmerge.models import hf_clip_backbone, open_clip_backbone, timm_backbone, tiny_cnn  # noqa: F401  (register)
from dgmerge.models.backbone import Backbone
from dgmerge.models.classifier import Classifier, set_trainable, trainable_encoder_names
from dgmerge.models.factory import LOADERS, build_classifier, load_backbone, register_loader
from dgmerge.models.heads import LinearHead, ZeroShotHead, build_linear_head
from dgmerge.models.timm_backbone import shared_mobilenetv2_config

__all__ = [
    "Backbone", "Classifier", "LOADERS", "LinearHead", "ZeroShotHead", "build_classifier",
    "build_linear_head", "load_backbone", "register_loader",
    "set_trainable", "shared_mobilenetv2_config", "trainable_encoder_names",
]
