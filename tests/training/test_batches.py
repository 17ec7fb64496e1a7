"""BatchStream with loader workers: same indices, resumable at the consumed batch, seeded workers."""

import gc
import warnings

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from dgmerge.training.batches import BatchStream, loader_images_per_s


def numbered(size: int) -> TensorDataset:
    """Items determined by their index: the batches name the indices drawn."""
    return TensorDataset(torch.arange(size).float().unsqueeze(1).repeat(1, 3), torch.arange(size))


class Augmented(Dataset):
    """Each item draws from torch's global RNG, as a random crop would."""

    def __len__(self) -> int:
        return 13

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.rand(3) + index, index


def take(stream: BatchStream, n: int) -> list:
    return [next(stream) for _ in range(n)]


def assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            torch.testing.assert_close(u, v, rtol=0, atol=0)


@pytest.mark.parametrize("size", [23, 3])  # several passes with drop_last; a dataset smaller than a batch
def test_workers_give_the_0_worker_batches(size):
    data = numbered(size)
    plain = take(BatchStream(data, 5, seed=7), 12)
    with BatchStream(data, 5, seed=7, num_workers=2) as stream:
        assert_same_batches(take(stream, 12), plain)


@pytest.mark.parametrize("persistent", [True, False])
def test_resume_with_workers_continues_with_the_next_batch(persistent):
    data = numbered(17)
    uninterrupted = take(BatchStream(data, 4, seed=3), 14)
    with BatchStream(data, 4, seed=3, num_workers=2, persistent_workers=persistent) as first:
        take(first, 6)  # over a pass boundary (4 batches a pass); the loader has prefetched beyond
        state = first.state_dict()
        plain = BatchStream(data, 4, seed=3)
        take(plain, 6)
        assert repr(state) == repr(plain.state_dict())  # prefetched batches do not count
        assert_same_batches(take(first, 3), uninterrupted[6:9])
        first.load_state_dict(state)  # the same stream, rewound while its workers run
        assert_same_batches(take(first, 8), uninterrupted[6:14])
    with BatchStream(data, 4, seed=3, num_workers=2, persistent_workers=persistent) as second:
        second.load_state_dict(state)
        assert_same_batches(take(second, 8), uninterrupted[6:14])
    zero = BatchStream(data, 4, seed=3)  # a state saved with workers resumes without them
    zero.load_state_dict(state)
    assert_same_batches(take(zero, 8), uninterrupted[6:14])


def test_workers_are_seeded_from_the_stream_seed():
    with BatchStream(Augmented(), 4, seed=11, num_workers=2) as a, \
            BatchStream(Augmented(), 4, seed=11, num_workers=2) as b:
        first, second = take(a, 7), take(b, 7)
    assert_same_batches(first, second)
    with BatchStream(Augmented(), 4, seed=12, num_workers=2) as c:
        other = take(c, 7)
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(first, other))
    plain = take(BatchStream(Augmented(), 4, seed=11), 7)
    assert [x[1].tolist() for x in first] == [x[1].tolist() for x in plain]  # same indices...
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(first, plain))  # ...other augmentations


@pytest.mark.parametrize("num_workers", [0, 2])
def test_pin_memory_works_without_warning(num_workers):
    data = numbered(10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with BatchStream(data, 4, seed=1, num_workers=num_workers, pin_memory=True) as stream:
            pinned = take(stream, 4)
    assert_same_batches(pinned, take(BatchStream(data, 4, seed=1), 4))
    assert pinned[0][0].is_pinned() == torch.accelerator.is_available()


def test_close_and_garbage_collection_stop_the_workers():
    stream = BatchStream(numbered(10), 4, seed=1, num_workers=2)
    next(stream)
    workers = list(stream._iterator._workers)
    assert workers and all(w.is_alive() for w in workers)
    stream.close()
    stream.close()
    assert not any(w.is_alive() for w in workers)
    assert_same_batches([next(stream)], take(BatchStream(numbered(10), 4, seed=1), 2)[1:])  # restarts
    workers = list(stream._iterator._workers)
    del stream
    gc.collect()
    for w in workers:
        w.join(timeout=10)
    assert not any(w.is_alive() for w in workers)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_images_per_s_is_positive(num_workers):
    assert loader_images_per_s(numbered(20), 4, num_workers, batches=3) > 0
