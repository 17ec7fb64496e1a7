"""Endless, seeded minibatch streams: one per source domain, as DomainBed draws them.

With `num_workers > 0` the items are loaded by a torch DataLoader's worker processes, so JPEG
decoding and augmentation run beside the training step instead of before it. The order of the
indices is drawn in the main process either way, so the batches' indices do not depend on the
number of workers.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from torch.utils.data._utils.pin_memory import pin_memory as _pin_batch


class _Cursor:
    """A position in the endless sequence of index lists: seeded passes, each a fresh permutation."""

    def __init__(self, size: int, batch_size: int, generator: torch.Generator):
        self.size = size
        self.batch_size = batch_size
        # A pass ends when a full batch no longer fits, unless the dataset is smaller than one batch.
        self.drop_last = size >= batch_size
        self.generator = generator
        self.pass_state: torch.Tensor | None = None
        self.order: list[int] = []
        self.position = 0

    def _new_pass(self) -> None:
        self.pass_state = self.generator.get_state()
        self.order = torch.randperm(self.size, generator=self.generator).tolist()
        self.position = 0

    def _pass_exhausted(self) -> bool:
        left = len(self.order) - self.position
        return left <= 0 or (self.drop_last and left < self.batch_size)

    def next_indices(self) -> list[int]:
        if self._pass_exhausted():
            self._new_pass()
        indices = self.order[self.position:self.position + self.batch_size]
        self.position += len(indices)
        return indices

    def copy(self) -> "_Cursor":
        twin = _Cursor(self.size, self.batch_size, torch.Generator())
        twin.generator.set_state(self.generator.get_state())
        twin.pass_state, twin.order, twin.position = self.pass_state, self.order, self.position
        return twin

    def state_dict(self) -> dict[str, Any]:
        return {"pass_state": self.pass_state, "position": self.position,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["pass_state"] is not None:
            self.generator.set_state(state["pass_state"])
            self._new_pass()
            self.position = int(state["position"])
        self.generator.set_state(state["generator"])


class _IndexLists:
    """The DataLoader's batch sampler: from the caller's position on, the index lists the stream draws.

    It runs ahead of the caller (the loader prefetches), so it walks a copy of the consumed cursor.
    It holds the cursor, not the stream, so the stream is in no reference cycle and garbage
    collection stops the workers as soon as the stream is dropped.
    """

    def __init__(self, consumed: _Cursor):
        self.consumed = consumed

    def __iter__(self) -> Iterator[list[int]]:
        cursor = self.consumed.copy()
        while True:
            yield cursor.next_indices()


class _Indexed(Dataset):
    """`dataset` whose items carry their index, so the main process can check what a worker loaded."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]


def _collate_indexed(items: list[tuple[int, Any]]) -> tuple[list[int], Any]:
    return [i for i, _ in items], default_collate([item for _, item in items])


class BatchStream:
    """Yields minibatches of `dataset` forever, reshuffling each pass with a seeded generator.

    The generator makes the data order a function of the seed alone, so two runs with the
    same seed see the same images in the same order. The position in the current pass is
    part of `state_dict()`, so a resumed run continues with exactly the next batch.

    `num_workers > 0` loads items in a DataLoader's worker processes (`prefetch_factor` batches
    ahead per worker, kept alive across a `load_state_dict` when `persistent_workers`). The
    index lists are the ones the 0-worker stream draws, and `state_dict()` counts only batches
    the caller has taken, not those prefetched. Random augmentations, however, draw from each
    worker's RNG, not the main process's: with workers the augmented pixels differ from the
    0-worker stream's (the indices do not). Workers are seeded from `seed` (the loader's
    generator), so two runs with the same seed and the same `num_workers` give identical
    batches; after `load_state_dict` the augmentation draws are not those of the uninterrupted
    run (the workers' RNG state is not saved).

    `pin_memory` pins batches for fast copies to the accelerator; without an accelerator it
    does nothing (torch would only warn). Call `close()`, or use the stream as a context
    manager, to stop the workers; garbage collection stops them too.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, num_workers: int = 0,
                 pin_memory: bool = False, prefetch_factor: int = 2, persistent_workers: bool = True):
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise ValueError("cannot draw batches from an empty dataset")
        if batch_size < 1 or num_workers < 0 or prefetch_factor < 1:
            raise ValueError(f"need batch_size >= 1, num_workers >= 0, prefetch_factor >= 1; got "
                             f"{batch_size}, {num_workers}, {prefetch_factor}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.size = len(dataset)  # type: ignore[arg-type]
        self.seed = seed
        self.num_workers = num_workers
        self.pin_memory = pin_memory and torch.accelerator.is_available()
        self.prefetch_factor = prefetch_factor
        self.persistent_workers = persistent_workers
        self._consumed = _Cursor(self.size, batch_size, torch.Generator().manual_seed(seed))
        self._loader: DataLoader | None = None
        self._iterator: Iterator[tuple[list[int], Any]] | None = None

    @property
    def generator(self) -> torch.Generator:
        return self._consumed.generator

    @property
    def drop_last(self) -> bool:
        return self._consumed.drop_last

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> Any:
        if self.num_workers == 0:
            batch = default_collate([self.dataset[i] for i in self._consumed.next_indices()])
            return _pin_batch(batch) if self.pin_memory else batch
        if self._iterator is None:
            self._start_loader()
        indices, batch = next(self._iterator)  # type: ignore[arg-type]
        expected = self._consumed.next_indices()
        if indices != expected:
            raise RuntimeError(f"a loader worker returned indices {indices[:8]}..., expected {expected[:8]}...")
        return batch

    def _start_loader(self) -> None:
        self._loader = DataLoader(
            _Indexed(self.dataset), batch_sampler=_IndexLists(self._consumed), num_workers=self.num_workers,
            collate_fn=_collate_indexed, pin_memory=self.pin_memory, prefetch_factor=self.prefetch_factor,
            persistent_workers=self.persistent_workers,
            # The workers' seeds (torch, random, numpy) are base_seed + worker id, base_seed drawn from this.
            generator=torch.Generator().manual_seed(self.seed))
        self._iterator = iter(self._loader)

    def close(self) -> None:
        """Stop the worker processes (a later `next` starts new ones). Safe to call twice."""
        iterator, self._iterator, self._loader = getattr(self, "_iterator", None), None, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def __enter__(self) -> "BatchStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the modules close() needs may already be gone
            pass

    def state_dict(self) -> dict[str, Any]:
        """Where the caller is: the generator at the start of this pass and the offset in it.

        Batches the loader prefetched but the caller has not taken are not counted.
        """
        return self._consumed.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`: the same permutation, from the same offset."""
        self._consumed.load_state_dict(state)
        if self._loader is not None and self.persistent_workers:
            self._iterator = iter(self._loader)  # same workers; drops what they prefetched, redraws indices
        else:
            self.close()


def _count_images(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)) and batch:
        return _count_images(batch[0])
    raise TypeError(f"cannot count the images in a batch of type {type(batch).__name__}")


def loader_images_per_s(dataset: Dataset, batch_size: int, num_workers: int, batches: int = 20,
                        pin_memory: bool = False) -> float:
    """Images per second a BatchStream with these settings delivers to a consumer that only takes.

    The first batch (worker start-up) is drawn before the clock starts; then `batches` batches
    are timed. Seed 0; the workers are stopped before returning.
    """
    if batches < 1:
        raise ValueError(f"need batches >= 1, got {batches}")
    with BatchStream(dataset, batch_size, seed=0, num_workers=num_workers, pin_memory=pin_memory) as stream:
        next(stream)
        images = 0
        start = time.perf_counter()
        for _ in range(batches):
            images += _count_images(next(stream))
        elapsed = time.perf_counter() - start
    return images / elapsed


__all__ = ["BatchStream", "loader_images_per_s"]
