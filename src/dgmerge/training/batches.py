"""Endless, seeded minibatch streams: one per source domain, as DomainBed draws them."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler


class BatchStream:
    """Yields minibatches of `dataset` forever, reshuffling each pass with a seeded generator.

    The generator makes the data order a function of the seed alone, so two runs with the
    same seed see the same images in the same order.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, num_workers: int = 0):
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise ValueError("cannot draw batches from an empty dataset")
        self.generator = torch.Generator().manual_seed(seed)
        sampler = RandomSampler(dataset, replacement=False, generator=self.generator)
        drop_last = len(dataset) >= batch_size  # type: ignore[arg-type]
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                 drop_last=drop_last, num_workers=num_workers)
        self._iterator: Iterator | None = None

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._iterator is None:
            self._iterator = iter(self.loader)
        try:
            return next(self._iterator)
        except StopIteration:
            self._iterator = iter(self.loader)
            return next(self._iterator)
