"""Image transforms: evaluation preprocessing and DomainBed's training augmentation."""

from __future__ import annotations

from typing import Literal, Sequence

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def eval_transform(image_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   resize: Literal["shorter", "squash"] = "shorter",
                   interpolation: Literal["bilinear", "bicubic", "nearest"] = "bicubic") -> T.Compose:
    """Deterministic preprocessing for evaluation and for un-augmented training.

    resize="shorter" (default): scale the shorter side to `image_size`, then center-crop a
    square of `image_size` — keeps the aspect ratio and crops nothing from square images
    (PACS is 227×227), unlike the "size / 0.875 then crop" ImageNet recipe that drops the
    border. resize="squash": DomainBed's `Resize((size, size))`, which distorts non-square images.
    `interpolation` follows the backbone's pretraining (timm's pretrained_cfg says which).
    """
    mode = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC,
            "nearest": T.InterpolationMode.NEAREST}.get(interpolation)
    if mode is None:
        raise ValueError(f"interpolation must be bilinear, bicubic or nearest, got {interpolation!r}")
    if resize == "shorter":
        geometry = [T.Resize(image_size, interpolation=mode, antialias=True), T.CenterCrop(image_size)]
    elif resize == "squash":
        geometry = [T.Resize((image_size, image_size), interpolation=mode, antialias=True)]
    else:
        raise ValueError(f"resize must be 'shorter' or 'squash', got {resize!r}")
    return T.Compose([T.Lambda(_to_rgb), *geometry, T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))])


def _to_rgb(image):
    # Module-level (not a lambda) so the transform pickles into DataLoader workers.
    return image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image


def train_transform(image_size: int, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> T.Compose:
    """DomainBed's training augmentation (`data_augmentation=True`), at `image_size`.

    RandomResizedCrop(scale 0.7–1), horizontal flip, ColorJitter(0.3, 0.3, 0.3, 0.3),
    RandomGrayscale (p=0.1), then ToTensor and Normalize.
    """
    return T.Compose([
        T.RandomResizedCrop(image_size, scale=(0.7, 1.0), antialias=True),
        T.RandomHorizontalFlip(),
        T.ColorJitter(0.3, 0.3, 0.3, 0.3),
        T.RandomGrayscale(),
        T.ToTensor(),
        T.Normalize(mean=list(mean), std=list(std)),
    ])
