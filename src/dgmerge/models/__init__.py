"""Backbones (image encoders) and heads.

`load_backbone(cfg)` dispatches on `cfg.kind` through the loader registry; importing this
package registers every built-in loader. Heavy libraries (open_clip, transformers) are
imported only when their loader runs. Weight files are read and written by `dgmerge.files`.
"""

from dgmerge.models import hf_clip_backbone, open_clip_backbone, timm_backbone, tiny_cnn  # noqa: F401  (register)
from dgmerge.models.backbone import Backbone, BackboneSpec
from dgmerge.models.classifier import Classifier, set_trainable, trainable_encoder_names
from dgmerge.models.factory import LOADERS, build_classifier, load_backbone, register_loader
from dgmerge.models.heads import LinearHead, ZeroShotHead, build_linear_head
from dgmerge.models.entries import PRETRAINED, PretrainedEntry, find_pretrained, register_pretrained, shared_dir

__all__ = [
    "Backbone", "BackboneSpec", "Classifier", "LOADERS", "LinearHead", "PRETRAINED", "PretrainedEntry",
    "ZeroShotHead", "build_classifier", "build_linear_head", "find_pretrained", "load_backbone", "register_loader",
    "register_pretrained", "set_trainable", "shared_dir", "trainable_encoder_names",
]
