"""Leave-one-domain-out environments: source in/out splits and the held-out test domain.

Every domain (the test domain too, as in DomainBed) is split in/out with
`seed_hash(trial_seed, domain_id)`. Sources train on their in-splits and select models on
their out-splits; the test domain is only ever scored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from dgmerge.data.errors import DataError
from dgmerge.data.imagefolder import DomainIndex, Sample
from dgmerge.data.splits import seed_hash, split_in_out


class DataLeakError(DataError, AssertionError):
    """A test-domain image reached a training or model-selection list."""


@dataclass
class Environments:
    """The sample lists of one (trial seed, test domain) cell.

    `sources` never contains `test_domain`; `train_in[d]` / `train_out[d]` are the training and
    model-selection samples of source d; `test` is the whole test domain and `test_in` /
    `test_out` its own DomainBed split (for `data.test_split: in | out`).
    """

    root: Path
    test_domain: str
    trial_seed: int
    holdout_fraction: float
    sources: list[str]
    train_in: dict[str, list[Sample]]
    train_out: dict[str, list[Sample]]
    test: list[Sample]
    test_in: list[Sample] = field(default_factory=list)
    test_out: list[Sample] = field(default_factory=list)

    def test_samples(self, split: Literal["full", "in", "out"] = "full") -> list[Sample]:
        """The test-domain samples that `data.test_split` asks to score."""
        return {"full": self.test, "in": self.test_in, "out": self.test_out}[split]

    def check_no_leak(self) -> None:
        """Raise DataLeakError if any test-domain image is in a training or selection list.

        Checked two ways: by path equality with the test samples, and by location (nothing
        under `<root>/<test_domain>/` may be used by a source), so a mislabelled list or a
        wrong domain key is caught as well as a shared file.
        """
        if self.test_domain in self.sources:
            raise DataLeakError(f"test domain {self.test_domain!r} is listed as a source: {self.sources}")
        test_paths = {os.path.abspath(p) for p, _ in self.test}
        test_dir = os.path.abspath(self.root / self.test_domain) + os.sep
        for name, lists in (("train_in", self.train_in), ("train_out", self.train_out)):
            if self.test_domain in lists:
                raise DataLeakError(f"{name} has an entry for the test domain {self.test_domain!r}")
            for domain, samples in lists.items():
                for path, _ in samples:
                    full = os.path.abspath(path)
                    if full in test_paths or full.startswith(test_dir):
                        raise DataLeakError(f"test-domain image {path} is in {name}[{domain!r}] "
                                            f"(test domain {self.test_domain!r})")
        for domain in self.sources:
            overlap = {p for p, _ in self.train_in[domain]} & {p for p, _ in self.train_out[domain]}
            if overlap:
                raise DataLeakError(f"{len(overlap)} image(s) of {domain!r} are in both its in and out "
                                    f"splits, e.g. {sorted(overlap)[0]}")


def subsample(samples: list[Sample], k: int, seed: int) -> list[Sample]:
    """A seeded, class-stratified subset of `k` samples, in their original order.

    Each class is shuffled and its i-th image gets the rank (i + 0.5) / n_class; the k
    smallest ranks win, so every class keeps about k / n of its images.
    """
    if k >= len(samples):
        return list(samples)
    rng = np.random.RandomState(seed)
    labels = np.array([label for _, label in samples])
    rank = np.empty(len(samples))
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank[rng.permutation(members)] = (np.arange(len(members)) + 0.5) / len(members)
    # A seeded tie-break keeps equal ranks (equal-sized classes) from favouring low labels.
    order = np.lexsort((rng.permutation(len(samples)), rank))
    keep = sorted(order[:k].tolist())
    return [samples[i] for i in keep]


def make_environments(index: DomainIndex, test_domain: str, trial_seed: int, holdout_fraction: float = 0.2,
                      max_images_per_domain: int | None = None) -> Environments:
    """Split every domain of `index` in/out and hold `test_domain` out of training and selection.

    With `max_images_per_domain`, each domain is first subsampled (stratified, seeded by the
    domain only, so every trial seed sees the same images and only the split changes).
    """
    index.require_domain(test_domain)
    if len(index.domains) < 2:
        raise DataError(f"{index.root} has only {len(index.domains)} domain(s); leave-one-domain-out needs 2")
    splits: dict[str, tuple[list[Sample], list[Sample], list[Sample]]] = {}
    for domain in index.domains:
        domain_id = index.domain_id(domain)
        samples = index.samples[domain]
        if max_images_per_domain is not None:
            samples = subsample(samples, max_images_per_domain, seed_hash("subsample", domain_id))
        in_idx, out_idx = split_in_out(len(samples), holdout_fraction, seed_hash(trial_seed, domain_id))
        splits[domain] = (samples, [samples[i] for i in in_idx], [samples[i] for i in out_idx])
    sources = [d for d in index.domains if d != test_domain]
    test_all, test_in, test_out = splits[test_domain]
    return Environments(
        root=index.root, test_domain=test_domain, trial_seed=trial_seed, holdout_fraction=holdout_fraction,
        sources=sources,
        train_in={d: splits[d][1] for d in sources},
        train_out={d: splits[d][2] for d in sources},
        test=test_all, test_in=test_in, test_out=test_out,
    )
