"""Keep decoded, transformed images in memory when the transform is deterministic.

Small datasets (the demo's, subsampled real ones) are read many times per run: every
training step and every validation pass would otherwise decode the same files again.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset


class InMemoryDataset(Dataset):
    """Wraps a dataset and memoises each item on first access.

    Only correct for deterministic transforms (no augmentation): the cached item is
    returned as it was first produced.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self._items: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, idx: int) -> Any:
        item = self._items.get(idx)
        if item is None:
            item = self._items[idx] = self.dataset[idx]
        return item

    def __getattr__(self, name: str) -> Any:
        # Pass through attributes such as .samples and .skipped of the wrapped dataset.
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)
