"""k-th smallest magnitude over a whole model, exactly or from a sample, without concatenating it.

Model-level trimming (TIES model-level, HAM's RHM) needs the quantile of |v| over all of a
model's parameters. Concatenating them costs one extra model copy per model; instead the
exact value is found by radix selection on the float32 bit patterns (non-negative floats sort
like their bits): one pass histograms the high 16 bits, a second pass the low 16 bits inside
the selected bucket. Both passes stream tensor by tensor, so memory is O(largest tensor).

The sampled estimate (HAM's "roughly approximated by random sampling") draws a uniform
sample of positions, takes the sample quantile, then measures the estimate's actual error
with one counting pass: the realised fraction of entries at or below it, versus the target.

Counting runs on the chunks' device. The sample positions are drawn by a CPU generator, so a
seed picks the same entries on every device.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor

# A pass yields [N, m] non-negative magnitude chunks (one row per model); called once per pass.
Chunks = Callable[[], Iterable[Tensor]]

_HI = 1 << 15  # high 16 bits of a non-negative float32 (sign bit is 0)
_LO = 1 << 16


@dataclass
class Threshold:
    """A magnitude threshold σ = the `rank`-th smallest |v| among `total` entries of one model.

    realized_fraction is the measured fraction of entries with |v| ≤ value; error is its
    distance to target_fraction = rank / total (0 for exact thresholds up to ties).
    dkw_bound is the 95% Dvoretzky–Kiefer–Wolfowitz bound on the sample quantile's rank error.
    """

    value: float
    rank: int
    total: int
    target_fraction: float
    method: str
    realized_fraction: float
    error: float
    sample_size: int | None = None
    dkw_bound: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _as_bits(chunk: Tensor) -> Tensor:
    chunk = chunk.to(torch.float32).contiguous()
    return chunk.view(torch.int32)


def _select(cum: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """Per row, the bucket holding the k-th entry and the rank of that entry inside it."""
    bucket = torch.searchsorted(cum, k.view(-1, 1)).view(-1)
    below = torch.where(bucket > 0, cum.gather(1, (bucket - 1).clamp(min=0).view(-1, 1)).view(-1),
                        torch.zeros_like(k))
    return bucket, k - below


def kth_smallest_magnitudes(chunks: Chunks, ks: Sequence[int]) -> list[float]:
    """Exact k-th smallest value (1-indexed) of each row's concatenated magnitudes.

    `chunks()` must yield [N, m] tensors of non-negative finite values, the same sequence on
    each call; `ks[i]` is the rank wanted for row i.
    """
    n_rows = len(ks)
    counts: Tensor | None = None
    for chunk in chunks():
        if counts is None:  # the chunks' device is known once the first one is there
            rows = torch.arange(n_rows, dtype=torch.int32, device=chunk.device).view(-1, 1)
            counts = torch.zeros(n_rows * _HI, dtype=torch.int64, device=chunk.device)
        hi = (_as_bits(chunk) >> 16) + rows * _HI
        counts += torch.bincount(hi.view(-1), minlength=n_rows * _HI)
    if counts is None:
        raise ValueError(f"ranks {list(ks)} outside 1..{[0] * n_rows}")
    k = torch.tensor(list(ks), dtype=torch.int64, device=counts.device)
    cum = counts.view(n_rows, _HI).cumsum(1)
    if bool((k < 1).any()) or bool((k > cum[:, -1]).any()):
        raise ValueError(f"ranks {list(ks)} outside 1..{cum[:, -1].tolist()}")
    bucket, k_in = _select(cum, k)

    counts = torch.zeros(n_rows * _LO, dtype=torch.int64, device=counts.device)
    wanted = bucket.to(torch.int32).view(-1, 1)
    for chunk in chunks():
        bits = _as_bits(chunk)
        inside = (bits >> 16) == wanted
        lo = (bits & 0xFFFF) + rows * _LO
        counts += torch.bincount(lo[inside], minlength=n_rows * _LO)
    low, _ = _select(counts.view(n_rows, _LO).cumsum(1), k_in)
    bits = (bucket << 16) | low
    return bits.to(torch.int32).view(torch.float32).tolist()  # bucket < 2^15: fits in int32


def _count_at_most(chunks: Chunks, values: Sequence[float]) -> list[int]:
    total: Tensor | None = None
    for chunk in chunks():
        if total is None:
            limit = torch.tensor(list(values), dtype=torch.float32, device=chunk.device).view(-1, 1)
            total = torch.zeros(len(values), dtype=torch.int64, device=chunk.device)
        total += (chunk.to(torch.float32) <= limit).sum(dim=1)
    return [0] * len(values) if total is None else total.tolist()


def _sampled(chunks: Chunks, total: int, n_rows: int, ks: Sequence[int], sample_size: int,
             generator: torch.Generator) -> list[float]:
    size = min(sample_size, total)
    index_dtype = torch.int32 if total < 2**31 else torch.int64
    # Positions stay on the generator's device (the CPU by default): finding each chunk's share
    # needs them as Python ints anyway; only the chunk's share of indices goes to its device.
    positions = torch.randint(0, total, (size,), generator=generator, dtype=index_dtype,
                              device=generator.device).sort().values
    sample: Tensor | None = None  # filled in place: no concatenated copy
    offset = filled = 0
    for chunk in chunks():
        if sample is None:
            sample = torch.empty(n_rows, size, dtype=torch.float32, device=chunk.device)
        width = chunk.shape[1]
        bounds = torch.tensor([offset, offset + width], dtype=index_dtype, device=positions.device)
        lo, hi = torch.searchsorted(positions, bounds).tolist()
        if hi > lo:
            sample[:, filled:filled + hi - lo] = chunk[:, (positions[lo:hi] - offset).long().to(chunk.device)]
            filled += hi - lo
        offset += width
    del positions
    if sample is None:
        raise ValueError("no magnitudes to sample from")
    values = []
    for row, k in enumerate(ks):
        rank = min(size, max(1, round(k / total * size)))
        values.append(float(torch.kthvalue(sample[row], rank).values))
    return values


def magnitude_thresholds(chunks: Chunks, total: int, ks: Sequence[int], method: str = "exact",
                         sample_size: int = 10_000_000, seed: int = 0) -> list[Threshold]:
    """σ_i = ks[i]-th smallest magnitude of row i, exactly ("exact") or estimated ("sampled").

    Every threshold reports its realised fraction, measured by one extra counting pass, so a
    sampled estimate's error is a measurement, not a guess.
    """
    if method == "exact":
        values = kth_smallest_magnitudes(chunks, ks)
        size, dkw = None, None
    elif method == "sampled":
        generator = torch.Generator(device="cpu").manual_seed(seed)
        values = _sampled(chunks, total, len(ks), ks, sample_size, generator)
        size = min(sample_size, total)
        dkw = math.sqrt(math.log(2 / 0.05) / (2 * size))
    else:
        raise ValueError(f"threshold method {method!r}; use 'exact' or 'sampled'")
    counts = _count_at_most(chunks, values) if method == "sampled" else list(ks)
    out = []
    for value, k, count in zip(values, ks, counts):
        target = k / total
        realized = count / total
        out.append(Threshold(value=value, rank=k, total=total, target_fraction=target, method=method,
                             realized_fraction=realized, error=abs(realized - target),
                             sample_size=size, dkw_bound=dkw))
    return out
