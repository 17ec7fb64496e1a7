"""Fisher-weighted averaging (Matena & Raffel): θ = Σ_i F_i θ_i / Σ_i F_i, element-wise."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from dgmerge.merging.average import weighted_average
from dgmerge.merging.registry import MergedState, register
from dgmerge.merging.task_vectors import compute_dtype
from dgmerge.merging.validate import MergeError, Param, StateDict, check_fractions_sum


@register("fisher", params={
    "fishers": Param("states", required=True, help="one dict of diagonal Fishers per model, from collect_fisher"),
    "weights": Param("floats", low=0.0, optional=True, help="per-model coefficients λ_i"),
    "eps": Param("float", 0, None, help="floor added to every Fisher entry so all-zero entries average"),
})
def fisher(pretrained: StateDict, finetuned: Sequence[StateDict], *, fishers: Sequence[StateDict],
           weights: Sequence[float] | None = None, eps: float = 1e-8) -> MergedState:
    """Diagonal-Fisher merge: Σ_i λ_i (F_i + ε) θ_i / Σ_i λ_i (F_i + ε) where Fishers exist, mean elsewhere."""
    n_models = len(finetuned)
    if len(fishers) != n_models:
        raise MergeError(f"fisher: {len(fishers)} Fisher dicts for {n_models} models; pass one per model")
    if weights is not None:
        check_fractions_sum("fisher", "weights", weights, n_models)
    lam = [1.0] * n_models if weights is None else list(weights)
    keys = [k for k in fishers[0] if k in pretrained and all(k in f for f in fishers)]
    if not keys:
        raise MergeError("fisher: no Fisher key matches a model key; collect_fisher(prefix=...) must "
                         "match the state-dict names")
    for key in keys:
        for f in fishers:
            if f[key].shape != pretrained[key].shape:
                raise MergeError(f"fisher: Fisher of {key!r} has shape {tuple(f[key].shape)}, "
                                 f"expected {tuple(pretrained[key].shape)}")
    result = weighted_average(pretrained, finetuned, weights)
    for key in keys:
        dtype = compute_dtype(pretrained[key])
        device = pretrained[key].device
        num = torch.zeros(pretrained[key].shape, dtype=dtype, device=device)
        den = torch.zeros_like(num)
        for w, state, f in zip(lam, finetuned, fishers):
            weight: Tensor = w * (f[key].to(device=device, dtype=dtype) + eps)
            num += weight * state[key].to(device=device, dtype=dtype)
            den += weight
        result[key] = torch.where(den > 0, num / den.clamp(min=torch.finfo(dtype).tiny),
                                  result[key].to(dtype)).to(pretrained[key].dtype)
    result.info = {"fisher_keys": keys, "eps": eps}
    return result
