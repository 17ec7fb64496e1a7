"""SCORE (Chaves et al., CVPR 2026), as in the official code (VirtualSpaceman/score_cvpr26, a75ee36).

Per 2-D key: the TSV shared basis U*, V*ᵀ (see tsv.py); each task matrix is projected,
M_i = U*ᵀ ΔW_i V* (r×r); off-diagonal outliers are trimmed; the trimmed M̃_i are SUMMED
(not averaged) and mapped back, ΔW = U* (Σ_i M̃_i) V*ᵀ; θ = θ0 + α·ΔW with α = 1. Other keys
(ndim ≠ 2, text_projection) take the mean task vector.

CNNs (our extension, not in the reference code, which only saw ViTs): a conv weight with a
1×1 kernel, shape (out, in, 1, 1), is the (out, in) matrix of a per-pixel linear map, so with
conv1x1="matrix" (default) it is reshaped to that matrix, merged by the rule above and
reshaped back. Without this, SCORE on a CNN whose trained tensors are 1×1 convs, depthwise
convs and BN parameters (MobileNetV2's last stages) is plain averaging. conv1x1="mean" keeps
the reference rule (every 4-D tensor averaged). k×k and depthwise convs (c, 1, k, k) are
averaged either way, as the reference does for the 4-D patch embedding. A grouped 1×1 conv
(groups > 1) cannot be told apart from its shape and would be merged as one matrix.

Trim (v1, the paper's method): O_i = M_i with its diagonal zeroed; μ, σ = mean and unbiased
std of all r² entries of O_i (diagonal zeros included); τ = 1.96·σ/T (1.96·σ for the
medical datasets: divide_tau_by_tasks=False); keep off-diagonal entries with |O_i − μ| ≤ τ.

Variants: v2 diagonal only; v3 trimmed off-diagonal only; v4 the full M_i without trimming —
the *intended* ablation. Upstream v4 has a bug: it adds the boolean flag `off_diag` (= 1) to
every entry instead of the off-diagonal part, computing diag(M_i) + 1; that behaviour is kept
as "v4-upstream" for reproducing published numbers. For square matrices U*, V* are
orthogonal, so the intended v4 equals the plain sum of task vectors (task arithmetic, λ=1).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from dgmerge.merging.registry import MergedState, register
from dgmerge.merging.task_vectors import add_to_base, map_float_tensors, stacked_task_vectors
from dgmerge.merging.tsv import SharedBasis, is_matrix_key, shared_basis
from dgmerge.merging.validate import Param, StateDict

VARIANTS = ("v1", "v2", "v3", "v4", "v4-upstream")
CONV1X1 = ("matrix", "mean")


def is_conv1x1(tensor: Tensor) -> bool:
    """A conv weight (out, in, 1, 1): a linear map over channels applied at every pixel."""
    return tensor.dim() == 4 and tuple(tensor.shape[2:]) == (1, 1)


def trim_projection(matrix: Tensor, n_tasks: int, variant: str = "v1", tau_mult: float = 1.96,
                    divide_tau_by_tasks: bool = True) -> Tensor:
    """SCORE's per-task trim of a projected r×r matrix M_i for the given variant."""
    off = matrix.clone()
    off.diagonal().zero_()
    diag = torch.diag(torch.diagonal(matrix))
    if variant == "v2":
        return diag
    if variant == "v4":
        return matrix.clone()
    if variant == "v4-upstream":
        return diag + 1
    tau = tau_mult * off.std() / (n_tasks if divide_tau_by_tasks else 1)
    kept = off * ((off - off.mean()).abs() <= tau)
    return kept if variant == "v3" else diag + kept


@register("score", params={
    "variant": Param("str", choices=VARIANTS, help="v1 = paper; v2/v3/v4 ablations; v4-upstream = upstream bug"),
    "scale": Param("float", help="α (the reference code fixes 1.0)"),
    "tau_mult": Param("float", 0, None, help="multiplier of the off-diagonal std (1.96)"),
    "divide_tau_by_tasks": Param("bool", help="τ = mult·σ/T (True) or mult·σ (FedISIC, RetinaDomains)"),
    "conv1x1": Param("str", choices=CONV1X1, help="1×1 conv weights: merged as (out, in) matrices "
                                                   "(matrix) or averaged like other 4-D tensors (mean)"),
})
def score(pretrained: StateDict, finetuned: Sequence[StateDict], *, variant: str = "v1",
          scale: float = 1.0, tau_mult: float = 1.96, divide_tau_by_tasks: bool = True,
          conv1x1: str = "matrix") -> MergedState:
    """SCORE: shared polar basis, per-task off-diagonal outlier trim, sum, θ0 + α·ΔW.

    info["matrix_rule"] lists the keys merged by the matrix rule (2-D weights and, with
    conv1x1="matrix", 1×1 convs, also listed in info["conv1x1_matrix"]). Matrices too small
    for the number of models (⌊r/T⌋ = 0) are averaged and listed in info["fallback_mean"].
    """
    fallback: list[str] = []
    matrix_rule: list[str] = []
    conv_matrix: list[str] = []
    n_tasks = len(finetuned)

    def combine(basis: SharedBasis, deltas: Tensor) -> Tensor:
        projected = basis.u.T @ deltas @ basis.vh.T  # [T, r, r]
        summed = sum(trim_projection(projected[i], n_tasks, variant, tau_mult, divide_tau_by_tasks)
                     for i in range(n_tasks))
        return basis.u @ summed @ basis.vh

    def merged(key: str) -> Tensor:
        base = pretrained[key]
        deltas = stacked_task_vectors(pretrained, finetuned, key)
        conv = conv1x1 == "matrix" and is_conv1x1(base)
        if not (conv or is_matrix_key(key, base)):
            return add_to_base(base, deltas.mean(dim=0), scale)
        # A 1×1 conv's (out, in, 1, 1) reshapes to (out, in) without copying or reordering.
        matrices = deltas.reshape(n_tasks, base.shape[0], base.shape[1])
        basis = shared_basis(matrices)
        if basis is None:
            fallback.append(key)
            return add_to_base(base, deltas.mean(dim=0), scale)
        matrix_rule.append(key)
        if conv:
            conv_matrix.append(key)
        return add_to_base(base, combine(basis, matrices).reshape(base.shape), scale)

    return map_float_tensors(pretrained, merged, info={"variant": variant, "scale": scale, "conv1x1": conv1x1,
                                                       "matrix_rule": matrix_rule, "conv1x1_matrix": conv_matrix,
                                                       "fallback_mean": fallback})
