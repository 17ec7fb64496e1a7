"""Magnitude trimming shared by TIES and RHM: per-model (or per-tensor) thresholds and masks."""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from torch import Tensor

from dgmerge.merging.quantile import Threshold, magnitude_thresholds
from dgmerge.merging.task_vectors import stacked_task_vectors
from dgmerge.merging.validate import StateDict


def rank_to_trim(total: int, trim: float) -> int:
    """Rank k of σ when the fraction `trim` is removed: σ = k-th smallest, keep |v| > σ."""
    return min(total, max(1, math.floor(trim * total)))


def rank_to_keep(total: int, keep: float) -> int:
    """Rank k of σ when the fraction `keep` is kept (TIES reference): keep |v| ≥ σ."""
    return min(total, max(1, total - math.floor(keep * total)))


def magnitude_chunks(pretrained: StateDict, finetuned: Sequence[StateDict], keys: Sequence[str]):
    """A re-iterable source of [N, numel] |τ| chunks, recomputed from the models on each pass."""

    def chunks() -> Iterator[Tensor]:
        for key in keys:
            vectors = stacked_task_vectors(pretrained, finetuned, key)
            yield vectors.abs_().to(torch.float32).reshape(len(finetuned), -1)

    return chunks


def model_thresholds(pretrained: StateDict, finetuned: Sequence[StateDict], keys: Sequence[str],
                     rank_of, method: str = "exact", sample_size: int = 10_000_000,
                     seed: int = 0) -> list[Threshold]:
    """One threshold per fine-tuned model over all of its `keys` concatenated (never built)."""
    total = sum(pretrained[k].numel() for k in keys)
    rank = rank_of(total)
    return magnitude_thresholds(magnitude_chunks(pretrained, finetuned, keys), total,
                                [rank] * len(finetuned), method, sample_size, seed)


def tensor_thresholds(vectors: Tensor, rank_of) -> Tensor:
    """Exact per-model thresholds of one tensor's [N, ...] task vectors, as an [N, 1, ...] tensor."""
    n_models = vectors.shape[0]
    flat = vectors.abs().to(torch.float32).reshape(n_models, -1)
    ranks = [rank_of(flat.shape[1])] * n_models
    values = magnitude_thresholds(lambda: [flat], flat.shape[1], ranks)
    return broadcastable([t.value for t in values], vectors)


def broadcastable(values: Sequence[float], vectors: Tensor) -> Tensor:
    """Per-model scalars shaped to broadcast against [N, ...] task vectors."""
    return torch.tensor(list(values), dtype=torch.float32).view(-1, *([1] * (vectors.dim() - 1)))


def magnitude_mask(vectors: Tensor, sigma: Tensor, strict: bool) -> Tensor:
    """|v| > σ (strict, RHM Eq. 11) or |v| ≥ σ (TIES reference), compared in float32."""
    magnitude = vectors.abs().to(torch.float32)
    return magnitude > sigma if strict else magnitude >= sigma


def threshold_info(thresholds: Sequence[Threshold]) -> list[dict]:
    """Thresholds as plain dicts for MergedState.info and the CLI."""
    return [t.as_dict() for t in thresholds]
