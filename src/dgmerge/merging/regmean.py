"""RegMean (Jin et al.): per linear layer, the weight minimising Σ_i ‖X_i W − X_i W_i‖².

With torch's y = x Wᵀ: W* = (Σ_i G̃_i)⁻¹ Σ_i G̃_i W_iᵀ, transposed back; G̃_i = α G_i +
(1−α) diag(G_i) shrinks the off-diagonal Gram entries (α = 0.9, as in Ye et al.). Tensors
without Gram matrices (biases, norms, embeddings) are averaged.

A 1×1 convolution (out, in, 1, 1) is a linear map applied at every pixel, so the closed form
holds for it too, with every pixel a row of X (`collect_gram(..., conv1x1=True)` collects
those Grams): conv1x1="matrix" solves it as an (out, in) matrix; "mean" averages it.
Depthwise and k×k convolutions are not linear maps of one pixel's channels: averaged.
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
    """W* for one linear layer from the models' (out×in) weights and (in×in) Gram matrices.

    Solved around the models' plain mean M: W* = M + ((Σ_i G̃_i)⁻¹ Σ_i G̃_i (W_i − M)ᵀ)ᵀ, the same
    minimiser as (Σ_i G̃_i)⁻¹ Σ_i G̃_i W_iᵀ, but the products act on the deviations from M
    (exactly zero for one model or identical models), so their rounding is not blown up by a
    near-singular Gram (ReLU features that seldom fire on a source's data), and where the
    summed Gram is singular (inputs dead in every model's data, which say nothing about their
    weights) the least-squares fallback keeps M. The N products dominate the cost and run in
    the inputs' precision (float32 for float32 models); M, the deviations and the SPD solve
    (Cholesky) in float64. It all runs on the device of the first weight; Grams held
    elsewhere are brought there.
    """
    dtype = torch.float64 if weights[0].dtype == torch.float64 else torch.float32
    device = weights[0].device
    mean = sum(w.to(device=device, dtype=torch.float64) for w in weights) / len(weights)
    lhs = torch.zeros(grams[0].shape, dtype=dtype, device=device)
    rhs = torch.zeros(weights[0].shape[1], weights[0].shape[0], dtype=dtype, device=device)
    for weight, gram in zip(weights, grams):
        # α G off the diagonal; α G_ii + (1 − α) G_ii = G_ii on it
        shrunk = gram.to(device=device, dtype=dtype) * alpha
        shrunk.diagonal().copy_(torch.diagonal(gram))
        lhs += shrunk
        deviation = (weight.to(device=device, dtype=torch.float64) - mean).to(dtype)
        rhs.addmm_(shrunk, deviation.T)
    lhs, rhs = lhs.double(), rhs.double()
    factor, info = torch.linalg.cholesky_ex(lhs)
    if int(info) == 0:
        solution = torch.cholesky_solve(rhs, factor)
    else:
        solution = min_norm_solve(lhs, rhs)
    return mean + solution.T


def min_norm_solve(lhs: Tensor, rhs: Tensor) -> Tensor:
    """The minimum-norm least-squares solution of lhs X = rhs for a symmetric PSD, singular lhs.

    On the CPU, LAPACK's SVD-based gelsd; CUDA's lstsq has only the QR driver, which needs full
    rank, so elsewhere the pseudo-inverse, with the same cutoff (singular values below
    eps·max(m, n) times the largest count as zero).
    """
    if lhs.device.type == "cpu":
        return torch.linalg.lstsq(lhs, rhs, driver="gelsd").solution
    return torch.linalg.pinv(lhs, hermitian=True) @ rhs


@register("regmean", params={
    "grams": Param("states", required=True, help="one dict of Gram matrices per model, from collect_gram"),
    "alpha": Param("float", 0, 1, help="α, the scale of the Gram off-diagonals, in [0, 1]"),
    "conv1x1": Param("str", choices=("matrix", "mean"),
                     help="1×1 convolutions with Grams: solve as (out, in) matrices, or average them"),
})
def regmean(pretrained: StateDict, finetuned: Sequence[StateDict], *, grams: Sequence[StateDict],
            alpha: float = 0.9, conv1x1: str = "matrix") -> MergedState:
    """RegMean over the keys that have Gram matrices in every model; plain mean elsewhere."""
    if len(grams) != len(finetuned):
        raise MergeError(f"regmean: {len(grams)} Gram dicts for {len(finetuned)} models; pass one per model")
    keys = [k for k in grams[0] if k in pretrained and all(k in g for g in grams)]
    if conv1x1 == "mean":
        keys = [k for k in keys if not is_conv1x1(pretrained[k])]
    if not keys:
        raise MergeError("regmean: no Gram key matches a model key; collect_gram(prefix=...) must "
                         "match the state-dict names")
    for key in keys:
        weight = pretrained[key]
        rows, cols = (weight.shape[0], weight.shape[1]) if weight.dim() == 2 or is_conv1x1(weight) else (None, None)
        for g in grams:
            if cols is None or tuple(g[key].shape) != (cols, cols):
                raise MergeError(f"regmean: Gram of {key!r} has shape {tuple(g[key].shape)}, "
                                 f"expected ({cols}, {cols}) for weight {tuple(pretrained[key].shape)}")
    result = weighted_average(pretrained, finetuned)
    for key in keys:
        shape = pretrained[key].shape
        solved = regmean_weight([s[key].reshape(shape[0], -1) for s in finetuned], [g[key] for g in grams], alpha)
        result[key] = solved.reshape(shape).to(compute_dtype(pretrained[key])).to(pretrained[key].dtype)
    result.info = {"alpha": alpha, "regmean_keys": keys, "conv1x1": conv1x1}
    return result


def is_conv1x1(weight: Tensor) -> bool:
    """Whether `weight` is a pointwise convolution's (out, in, 1, 1) kernel."""
    return weight.dim() == 4 and tuple(weight.shape[2:]) == (1, 1)
