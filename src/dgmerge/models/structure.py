"""Finding an encoder's sequential stages (blocks) and what follows them (tail), and the
standard eval preprocessing, for encoders whose library does not name them for us."""

from __future__ import annotations

import re
from typing import Callable, Sequence

from torch import nn

# ResNet-like stage attributes: layer1..layer4 (torchvision/timm ResNet), s1..s4 (RegNet).
_STAGE_NAME = re.compile(r"^(layer|s|stage)(\d+)$")


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def find_blocks(encoder: nn.Module, max_depth: int = 2) -> tuple[list[str], str | None]:
    """The encoder's sequential stages, input to output, and the top-level child that holds them.

    Prefers numbered stage attributes (layer1..layer4); otherwise the shallowest Sequential /
    ModuleList whose children all hold parameters, the longest one at that depth (so ConvNeXt
    gives its 4 stages rather than the 27 blocks inside one stage). Returns ([], None) if
    nothing fits.
    """
    staged = [(int(m.group(2)), name) for name, child in encoder.named_children()
              if (m := _STAGE_NAME.match(name)) and _has_params(child)]
    if len(staged) >= 2:
        names = [name for _, name in sorted(staged)]
        return names, names[-1]
    best: tuple[int, int, str] | None = None  # (depth, -length, name)
    for name, module in encoder.named_modules():
        depth = name.count(".") + 1 if name else 0
        if not name or depth > max_depth or not isinstance(module, (nn.Sequential, nn.ModuleList)):
            continue
        children = list(module.children())
        if len(children) < 2 or not all(_has_params(c) for c in children):
            continue
        key = (depth, -len(children), name)
        if best is None or key[:2] < best[:2]:
            best = key
    if best is None:
        return [], None
    container = best[2]
    count = len(list(encoder.get_submodule(container).children()))
    return [f"{container}.{i}" for i in range(count)], container.split(".")[0]


def find_tail(encoder: nn.Module, last_top_level: str | None) -> list[str]:
    """Top-level children registered after `last_top_level` that hold parameters (final norm,
    head conv, ...): they sit after the last block, so `last:N` should train them too."""
    if last_top_level is None:
        return []
    names = [name for name, _ in encoder.named_children()]
    if last_top_level not in names:
        return []
    after = names[names.index(last_top_level) + 1:]
    return [name for name in after if _has_params(encoder.get_submodule(name))]


def resize_crop_normalize(image_size: int, mean: Sequence[float], std: Sequence[float],
                          interpolation: str = "bilinear") -> Callable:
    """PIL image -> [3, S, S] tensor: shorter side resized to S, center crop S, normalised."""
    from dgmerge.data.transforms import eval_transform

    known = interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear"
    return eval_transform(image_size, mean, std, interpolation=known)  # type: ignore[arg-type]
