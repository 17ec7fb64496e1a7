"""DomainBed's seeded in/out splits, reproduced exactly.

DomainBed (`train.py`) splits every environment with
`misc.split_dataset(env, int(len(env) * holdout_fraction), misc.seed_hash(trial_seed, env_i))`:
the first `int(n * holdout)` indices of a seeded shuffle are the "out" split (model
selection), the rest the "in" split (training). Hashing with md5 instead of Python's
`hash` makes the seed identical across processes, machines and Python versions.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np


def seed_hash(*args: Any) -> int:
    """A seed derived from `args`: md5 of `str(args)`, modulo 2**31 (DomainBed's `misc.seed_hash`)."""
    digest = hashlib.md5(str(args).encode("utf-8")).hexdigest()
    return int(digest, 16) % (2**31)


def split_in_out(n: int, holdout_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (in_idx, out_idx) of a seeded split of `n` items; `out` has int(n * holdout_fraction).

    Same keys as DomainBed's `split_dataset(dataset, int(n * holdout), seed)`, whose first
    part is the out split: `RandomState(seed).shuffle(list(range(n)))`, out = the head.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    n_out = int(n * holdout_fraction)
    keys = list(range(n))
    np.random.RandomState(seed).shuffle(keys)
    return keys[n_out:], keys[:n_out]
