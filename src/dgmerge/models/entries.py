"""Named pretrained weights and the settings that travel with them (timm's pretrained_cfg).

Weights converted from another framework need their own recipe: the TFLite MobileNetV2 needs
TensorFlow's "same" padding and inputs scaled to [-1, 1]. Stating the recipe here, once, with
the weights' entry lets a config say `pretrained: tflite_in1k` instead of repeating it; the timm
loader applies the entry's settings wherever the config leaves them unset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

# The TF-converted ImageNet MobileNetV2 of the project's shared/ folder.
SHARED_MOBILENETV2 = "weights/mobilenetv2_100_imagenet_tflite.safetensors"


def shared_dir() -> Path | None:
    """The project's shared/ folder: $DGMERGE_SHARED, else the repository's sibling "shared"."""
    env = os.environ.get("DGMERGE_SHARED")
    if env:
        return Path(env)
    # src/dgmerge/models/entries.py -> repository root is parents[3]; shared/ sits beside it.
    candidate = Path(__file__).resolve().parents[3].parent / "shared"
    return candidate if candidate.is_dir() else None


@dataclass(frozen=True)
class PretrainedEntry:
    """One named set of pretrained weights of a timm model, and what using them takes.

    model_kwargs: constructor arguments the weights need; mean, std, image_size: their input
    preprocessing; file: the weights file relative to the shared/ folder, used when a config
    gives no checkpoint. A config's own values win over the entry's.
    """

    model: str
    tag: str
    model_kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    image_size: int | None = None
    file: str | None = None
    about: str = ""

    def weights_path(self) -> Path:
        """The entry's weights file under the shared/ folder; FileNotFoundError when there is none."""
        root = shared_dir()
        if self.file is None or root is None:
            raise FileNotFoundError(f"pretrained entry {self.model} {self.tag}: no weights file known here; set "
                               "DGMERGE_SHARED to the shared/ folder or give backbone.checkpoint")
        return root / self.file


# (model name, tag) -> entry, filled by register_pretrained.
PRETRAINED: dict[tuple[str, str], PretrainedEntry] = {}


def register_pretrained(entry: PretrainedEntry) -> PretrainedEntry:
    """Add `entry` under (entry.model, entry.tag); a second, different entry there is an error."""
    key = (entry.model, entry.tag)
    if key in PRETRAINED and PRETRAINED[key] != entry:
        raise ValueError(f"a pretrained entry {entry.model} {entry.tag} is already registered")
    PRETRAINED[key] = entry
    return entry


def find_pretrained(model: str, tag: str | None) -> PretrainedEntry | None:
    """The entry `tag` of `model`, or None when `tag` names none (it may then be "hub" or a file)."""
    return PRETRAINED.get((model, tag)) if tag is not None else None


def pretrained_tags(model: str) -> list[str]:
    """The registered entry tags of `model`, sorted."""
    return sorted(tag for name, tag in PRETRAINED if name == model)


TFLITE_MOBILENETV2 = register_pretrained(PretrainedEntry(
    model="mobilenetv2_100", tag="tflite_in1k",
    # TensorFlow pads convolutions "same" (asymmetrically) and the TFLite model was trained on
    # x / 127.5 - 1; timm's defaults (symmetric padding, ImageNet mean/std) would shift every
    # activation. 224 px is the resolution the weights were trained at.
    model_kwargs=MappingProxyType({"pad_type": "same"}), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
    image_size=224, file=SHARED_MOBILENETV2,
    about="TensorFlow's ImageNet-1k MobileNetV2 1.0 (TFLite), converted to timm (shared/weights)",
))


__all__ = [
    "PRETRAINED", "SHARED_MOBILENETV2", "TFLITE_MOBILENETV2", "PretrainedEntry", "find_pretrained",
    "pretrained_tags", "register_pretrained", "shared_dir",
]
