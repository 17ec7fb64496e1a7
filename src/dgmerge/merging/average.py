"""Uniform (or weighted) weight averaging: the model soup of Wortsman et al."""

from __future__ import annotations

from typing import Sequence

import torch

from dgmerge.merging.registry import MergedState, register
from dgmerge.merging.task_vectors import compute_dtype, map_float_tensors, one_thread
from dgmerge.merging.validate import Param, StateDict, check_fractions_sum


def weighted_average(pretrained: StateDict, finetuned: Sequence[StateDict],
                     weights: Sequence[float] | None = None) -> MergedState:
    """Σ_i w_i θ_i / Σ_i w_i per float tensor (w_i = 1 when `weights` is None)."""
    n_models = len(finetuned)
    weights = [1.0] * n_models if weights is None else list(weights)
    total = float(sum(weights))

    def merged(key: str):
        base = pretrained[key]
        dtype = compute_dtype(base)
        acc = torch.zeros(base.shape, dtype=dtype, device=base.device)
        for w, state in zip(weights, finetuned):
            acc.add_(state[key].to(device=base.device, dtype=dtype), alpha=w / total)
        return acc

    with one_thread():
        return map_float_tensors(pretrained, merged)


@register("average", params={
    "weights": Param("floats", low=0.0, optional=True, help="one non-negative weight per model"),
})
def average(pretrained: StateDict, finetuned: Sequence[StateDict], *,
            weights: Sequence[float] | None = None) -> MergedState:
    """Weight averaging (model soup): θ = Σ_i w_i θ_i / Σ_i w_i, uniform by default."""
    if weights is not None:
        check_fractions_sum("average", "weights", weights, len(finetuned))
    return weighted_average(pretrained, finetuned, weights)
