"""TIES-merging (Yadav et al.): trim each task vector, elect signs by mass, disjoint mean, scale."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from dgmerge.merging.registry import MergedState, register
from dgmerge.merging.task_vectors import disjoint_aggregate, float_keys, merge_pieces
from dgmerge.merging.trimming import magnitude_mask, magnitude_sigmas, rank_to_keep
from dgmerge.merging.validate import Param, StateDict

TRIM_PARAMS = {
    "level": Param("str", choices=("model", "tensor"),
                   help="threshold over the whole model's concatenated task vector, or per tensor"),
    "threshold": Param("str", choices=("exact", "sampled"),
                       help="exact k-th value (streamed radix select) or a sampled estimate (model level only)"),
    "sample_size": Param("int", 1, None, help="sample size of the sampled estimate"),
    "seed": Param("int", help="seed of the sampled estimate"),
}


def ties(pretrained: StateDict, finetuned: Sequence[StateDict], *, keep: float = 0.2, scale: float = 1.0,
         level: str = "model", aggregate: str = "mean", threshold: str = "exact",
         sample_size: int = 10_000_000, seed: int = 0) -> MergedState:
    """TIES: keep the top `keep` fraction of each |τ_i|, elect signs by mass, disjoint mean, θ0 + λ·τ.

    level="model" ranks each model's entries over all its float tensors at once, as the
    reference code does on the flattened model; level="tensor" ranks within each tensor.
    An entry survives when |τ| ≥ σ (the reference code's rule); keep=1 keeps everything.
    Entries whose trimmed task vectors sum to exactly zero take the model-wide majority sign.
    """
    keys = float_keys(pretrained)
    info: dict = {"keep": keep, "scale": scale, "level": level, "aggregate": aggregate}
    sigma_model, sigma_tensor = None, None
    if keep < 1.0:
        sigma_model, sigma_tensor = magnitude_sigmas(pretrained, finetuned, keys, lambda n: rank_to_keep(n, keep), level,
                                                     threshold, sample_size, seed, info)

    # The reference resolves exact-zero sums with the majority sign of the whole model, which
    # is only known after a full pass: such entries are merged as 0 first, with both
    # candidate values kept aside, and patched once the majority is known.
    balance = 0
    deferred: list[tuple[str, Tensor, Tensor, Tensor]] = []

    def combine(key: str, part: slice, vectors: Tensor) -> Tensor:
        nonlocal balance
        if keep < 1.0:
            sigma = sigma_model if sigma_model is not None else sigma_tensor[key]
            vectors.mul_(magnitude_mask(vectors, sigma, strict=False))
        sign = torch.sign(vectors.sum(dim=0))
        balance += int(sign.sum())
        tied = (sign == 0) & (vectors != 0).any(dim=0)
        if bool(tied.any()):
            where = tied.nonzero().view(-1)
            candidates = vectors[:, where]
            ones = torch.ones(len(where), dtype=vectors.dtype, device=vectors.device)
            deferred.append((key, where + part.start, disjoint_aggregate(candidates, ones, aggregate),
                             disjoint_aggregate(candidates, -ones, aggregate)))
        return disjoint_aggregate(vectors, sign, aggregate)

    result = merge_pieces(pretrained, finetuned, combine, scale, info=info)
    majority = 1 if balance >= 0 else -1
    for key, where, if_positive, if_negative in deferred:
        base = pretrained[key].reshape(-1)[where].to(if_positive.dtype)
        value = base + scale * (if_positive if majority > 0 else if_negative)
        result[key].view(-1)[where] = value.to(result[key].dtype)
    result.info["majority_sign"] = majority
    result.info["zero_sum_entries"] = sum(len(d[1]) for d in deferred)
    return result


# Registered by a call, not a decorator: mutmut (docs/testing.md) cannot mutate decorated functions.
ties = register("ties", params={
    "keep": Param("float", 0, 1, low_open=True, help="k, the fraction of each task vector kept, in (0, 1]"),
    "scale": Param("float", help="λ applied to the merged task vector"),
    "aggregate": Param("str", choices=("mean", "sum"), help="disjoint mean (TIES) or disjoint sum"),
    **TRIM_PARAMS,
})(ties)
