"""SCORE (Chaves et al., CVPR 2026), as in the official code (VirtualSpaceman/score_cvpr26, a75ee36).

Per 2-D key: the TSV shared basis U*, V*ᵀ (see tsv.py); each task matrix is projected,
M_i = U*ᵀ ΔW_i V* (r×r); off-diagonal outliers are trimmed; the trimmed M̃_i are SUMMED
(not averaged) and mapped back, ΔW = U* (Σ_i M̃_i) V*ᵀ; θ = θ0 + α·ΔW with α = 1. Other keys
(ndim ≠ 2, text_projection) take the mean task vector.

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
from dgmerge.merging.task_vectors import map_float_tensors
from dgmerge.merging.tsv import SharedBasis, merge_in_basis
from dgmerge.merging.validate import Param, StateDict

VARIANTS = ("v1", "v2", "v3", "v4", "v4-upstream")


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
})
def score(pretrained: StateDict, finetuned: Sequence[StateDict], *, variant: str = "v1",
          scale: float = 1.0, tau_mult: float = 1.96, divide_tau_by_tasks: bool = True) -> MergedState:
    """SCORE: shared polar basis, per-task off-diagonal outlier trim, sum, θ0 + α·ΔW.

    Keys too small for the number of models (⌊r/T⌋ = 0) are averaged and listed in
    info["fallback_mean"].
    """
    fallback: list[str] = []
    n_tasks = len(finetuned)

    def combine(basis: SharedBasis, deltas: Tensor) -> Tensor:
        projected = basis.u.T @ deltas @ basis.vh.T  # [T, r, r]
        summed = sum(trim_projection(projected[i], n_tasks, variant, tau_mult, divide_tau_by_tasks)
                     for i in range(n_tasks))
        return basis.u @ summed @ basis.vh

    def merged(key: str) -> Tensor:
        return merge_in_basis(pretrained, finetuned, key, scale, fallback, combine)

    return map_float_tensors(pretrained, merged, info={"variant": variant, "scale": scale,
                                                       "fallback_mean": fallback})
