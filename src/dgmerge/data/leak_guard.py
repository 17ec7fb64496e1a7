"""A check on the samples themselves: no test-domain image reaches training, a head, statistics or selection.

Dict keys and domain names can lie (a test set passed under a source's name); the image
paths a dataset serves cannot. Every dataset dgmerge trains, fits, collects statistics or
selects models on names its samples (`.samples`, through Subset, ConcatDataset and wrappers),
so the check reads those paths and refuses any that belong to the test domain.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping

from torch.utils.data import ConcatDataset, Dataset, Subset

from dgmerge.data.environments import DataLeakError


def sample_paths(data: Dataset) -> list[str]:
    """The paths of the samples `data` serves, in order (through Subset, ConcatDataset and wrappers)."""
    if isinstance(data, Subset):
        inner = sample_paths(data.dataset)
        return [inner[int(i)] for i in data.indices]
    if isinstance(data, ConcatDataset):
        return [path for part in data.datasets for path in sample_paths(part)]
    samples = getattr(data, "samples", None)
    if samples is not None:
        return [str(path) for path, _ in samples]
    inner = getattr(data, "dataset", None)
    if isinstance(inner, Dataset):
        return sample_paths(inner)
    raise DataLeakError(f"cannot check a {type(data).__name__} for test-domain images: it names no samples "
                        "(give it a .samples list of (path, label))")


def refuse_test_samples(datasets: Mapping[str, Dataset], test_paths: Collection[str], purpose: str) -> None:
    """Raise DataLeakError naming the image if any of `datasets` serves one of `test_paths`.

    `test_paths` are absolute paths of the test domain's images; `purpose` says what the data
    was for ("training", "model selection", "the probe head", ...), for the message.
    """
    if not test_paths:
        return
    for name, data in datasets.items():
        for path in sample_paths(data):
            if os.path.abspath(path) in test_paths:
                raise DataLeakError(f"test-domain image {path} reached {purpose} (as part of {name!r}); the test "
                                    "domain may only be scored")
