"""Magnitude trimming shared by TIES and RHM: per-model (or per-tensor) thresholds and masks."""

from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

from dgmerge.merging.quantile import Threshold, magnitude_thresholds
from dgmerge.merging.task_vectors import one_thread, task_vector_pieces
from dgmerge.merging.validate import StateDict


def rank_to_trim(total: int, trim: float) -> int:
    """Rank k of σ when the fraction `trim` is removed: σ = k-th smallest, keep |v| > σ."""
    return min(total, max(1, math.floor(trim * total)))


def rank_to_keep(total: int, keep: float) -> int:
    """Rank k of σ when the fraction `keep` is kept (TIES reference): keep |v| ≥ σ."""
    return min(total, max(1, total - math.floor(keep * total)))


def magnitude_chunks(pretrained: StateDict, finetuned: Sequence[StateDict], keys: Sequence[str]):
    """A re-iterable source of [N, piece] |τ| chunks, recomputed from the models on each pass."""

    def chunks() -> Iterator[Tensor]:
        for _, _, vectors in task_vector_pieces(pretrained, finetuned, keys):
            yield vectors.abs_().to(torch.float32)

    return chunks


def model_thresholds(pretrained: StateDict, finetuned: Sequence[StateDict], keys: Sequence[str],
                     rank_of, method: str = "exact", sample_size: int = 10_000_000,
                     seed: int = 0) -> list[Threshold]:
    """One threshold per fine-tuned model over all of its `keys` concatenated (never built)."""
    total = sum(pretrained[k].numel() for k in keys)
    rank = rank_of(total)
    with one_thread():
        return magnitude_thresholds(magnitude_chunks(pretrained, finetuned, keys), total,
                                    [rank] * len(finetuned), method, sample_size, seed)


def tensor_thresholds(pretrained: StateDict, finetuned: Sequence[StateDict], keys: Sequence[str],
                      rank_of) -> dict[str, Tensor]:
    """Exact per-model thresholds of each tensor on its own (layer-level), as [N, 1] tensors."""
    out = {}
    with one_thread():
        for key in keys:
            ranks = [rank_of(pretrained[key].numel())] * len(finetuned)
            values = magnitude_thresholds(magnitude_chunks(pretrained, finetuned, [key]),
                                          pretrained[key].numel(), ranks)
            out[key] = model_sigma(values, device=pretrained[key].device)
    return out


def model_sigma(thresholds: Sequence[Threshold], *, device: str | torch.device = "cpu") -> Tensor:
    """Per-model thresholds as an [N, 1] tensor (on `device`) that broadcasts against [N, piece] vectors."""
    return torch.tensor([t.value for t in thresholds], dtype=torch.float32, device=device).view(-1, 1)


def magnitude_mask(vectors: Tensor, sigma: Tensor, strict: bool) -> Tensor:
    """|v| > σ (strict, RHM Eq. 11) or |v| ≥ σ (TIES reference), compared in float32."""
    magnitude = vectors.abs().to(torch.float32)
    return magnitude > sigma if strict else magnitude >= sigma


def threshold_info(thresholds: Sequence[Threshold]) -> list[dict]:
    """Thresholds as plain dicts for MergedState.info and the CLI."""
    return [t.as_dict() for t in thresholds]


def magnitude_sigmas(pretrained: StateDict, finetuned: Sequence[StateDict], keys: Sequence[str],
                     rank: Callable[[int], int], level: str, threshold: str, sample_size: int, seed: int,
                     info: dict) -> tuple[Tensor | None, dict[str, Tensor] | None]:
    """Per-model magnitude thresholds (level="model") or per-tensor ones (level="tensor").

    Returns (sigma_model, sigma_tensor), one of them None; model-level thresholds and their
    estimation error are recorded in info["thresholds"].
    """
    if level == "model":
        thresholds = model_thresholds(pretrained, finetuned, keys, rank, threshold, sample_size, seed)
        info["thresholds"] = threshold_info(thresholds)
        return model_sigma(thresholds, device=pretrained[keys[0]].device), None
    return None, tensor_thresholds(pretrained, finetuned, keys, rank)
