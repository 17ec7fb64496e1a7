"""scikit-learn's 8×8 digits as a built-in task: 1,797 images from a registry package, no download."""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

DIGITS = "digits"
DIGIT_CLASSES = [str(i) for i in range(10)]


class DigitImages(Dataset):
    """scikit-learn's 8×8 digits as 3-channel images of `size` px, normalised like the backbone."""

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...]):
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
        self.labels = [int(t) for t in digits.target]
        self.samples = [(f"sklearn-digits/{i}", label) for i, label in enumerate(self.labels)]
        self.size = size
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.transform = f"sklearn digits 8x8 /16, bilinear to {size}px, 3 channels, normalised"

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        image = F.interpolate(self.images[idx][None, None], size=(self.size, self.size), mode="bilinear",
                              align_corners=False)[0].expand(3, -1, -1)
        return (image - self.mean) / self.std, self.labels[idx]


