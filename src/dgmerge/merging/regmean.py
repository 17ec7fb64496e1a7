"""RegMean (Jin et al.): per linear layer, the weight minimising Σ_i ‖X_i W − X_i W_i‖².

With torch's y = x Wᵀ: W* = (Σ_i G̃_i)⁻¹ Σ_i G̃_i W_iᵀ, transposed back; G̃_i = α G_i +
(1−α) diag(G_i) shrinks the off-diagonal Gram entries (α = 0.9, as in Ye et al.). Tensors
without Gram matrices (biases, norms, embeddings) are averaged.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from dgmerge.merging.average import weighted_average
from dgmerge.merging.registry import MergedState, register
from dgmerge.merging.task_vectors import compute_dtype
from dgmerge.merging.validate import MergeError, Param, StateDict


def regmean_weight(weights: Sequence[Tensor], grams: Sequence[Tensor], alpha: float) -> Tensor:
    """W* for one linear layer from the models' (out×in) weights and (in×in) Gram matrices."""
    dtype = torch.float64
    lhs = torch.zeros_like(grams[0], dtype=dtype)
    rhs = torch.zeros(weights[0].shape[1], weights[0].shape[0], dtype=dtype)
    for weight, gram in zip(weights, grams):
        gram = gram.to(dtype)
        shrunk = alpha * gram + (1 - alpha) * torch.diag(torch.diagonal(gram))
        lhs += shrunk
        rhs += shrunk @ weight.to(dtype).T
    try:
        solution = torch.linalg.solve(lhs, rhs)
    except RuntimeError:
        solution = torch.linalg.pinv(lhs) @ rhs  # singular Gram (dead inputs): least-norm solution
    return solution.T


@register("regmean", params={
    "grams": Param("states", required=True, help="one dict of Gram matrices per model, from collect_gram"),
    "alpha": Param("float", 0, 1, help="α, the scale of the Gram off-diagonals, in [0, 1]"),
})
def regmean(pretrained: StateDict, finetuned: Sequence[StateDict], *, grams: Sequence[StateDict],
            alpha: float = 0.9) -> MergedState:
    """RegMean over the keys that have Gram matrices in every model; plain mean elsewhere."""
    if len(grams) != len(finetuned):
        raise MergeError(f"regmean: {len(grams)} Gram dicts for {len(finetuned)} models; pass one per model")
    keys = [k for k in grams[0] if k in pretrained and all(k in g for g in grams)]
    if not keys:
        raise MergeError("regmean: no Gram key matches a model key; collect_gram(prefix=...) must "
                         "match the state-dict names")
    for key in keys:
        rows, cols = pretrained[key].shape if pretrained[key].dim() == 2 else (None, None)
        for g in grams:
            if cols is None or tuple(g[key].shape) != (cols, cols):
                raise MergeError(f"regmean: Gram of {key!r} has shape {tuple(g[key].shape)}, "
                                 f"expected ({cols}, {cols}) for weight {tuple(pretrained[key].shape)}")
    result = weighted_average(pretrained, finetuned)
    for key in keys:
        solved = regmean_weight([s[key] for s in finetuned], [g[key] for g in grams], alpha)
        result[key] = solved.to(compute_dtype(pretrained[key])).to(pretrained[key].dtype)
    result.info = {"alpha": alpha, "regmean_keys": keys}
    return result
