"""Endless, seeded minibatch streams: one per source domain, as DomainBed draws them."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset, default_collate


class BatchStream:
    """Yields minibatches of `dataset` forever, reshuffling each pass with a seeded generator.

    The generator makes the data order a function of the seed alone, so two runs with the
    same seed see the same images in the same order. The position in the current pass is
    part of `state_dict()`, so a resumed run continues with exactly the next batch.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, num_workers: int = 0):
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise ValueError("cannot draw batches from an empty dataset")
        self.dataset = dataset
        self.batch_size = batch_size
        self.size = len(dataset)  # type: ignore[arg-type]
        # A pass ends when a full batch no longer fits, unless the dataset is smaller than one batch.
        self.drop_last = self.size >= batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self._pass_state: torch.Tensor | None = None
        self._order: list[int] = []
        self._position = 0

    def __iter__(self) -> "BatchStream":
        return self

    def _new_pass(self) -> None:
        self._pass_state = self.generator.get_state()
        self._order = torch.randperm(self.size, generator=self.generator).tolist()
        self._position = 0

    def _pass_exhausted(self) -> bool:
        left = len(self._order) - self._position
        return left <= 0 or (self.drop_last and left < self.batch_size)

    def __next__(self) -> Any:
        if self._pass_exhausted():
            self._new_pass()
        indices = self._order[self._position:self._position + self.batch_size]
        self._position += len(indices)
        return default_collate([self.dataset[i] for i in indices])

    def state_dict(self) -> dict[str, Any]:
        """Where the stream is: the generator at the start of this pass and the offset in it."""
        return {"pass_state": self._pass_state, "position": self._position,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`: the same permutation, from the same offset."""
        if state["pass_state"] is not None:
            self.generator.set_state(state["pass_state"])
            self._new_pass()
            self._position = int(state["position"])
        self.generator.set_state(state["generator"])
