"""TSV-M (Gargiulo et al.) and the shared singular basis it has in common with SCORE.

For a 2-D key with task matrices ΔW_1..ΔW_T (m×n, r = min(m, n)), keep k = ⌊r/T⌋ leading
singular triplets per task, stack them into Û (m×r), ŝ (r), V̂ᵀ (r×n) (leftover slots zero),
and orthogonalise each stack by its polar factor: U* = P Qᵀ for Û = P Σ Qᵀ (same for V̂ᵀ).
Keys with ndim ≠ 2, and `text_projection`, are averaged, as in the reference code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from dgmerge.merging.registry import MergedState, register
from dgmerge.merging.task_vectors import add_to_base, map_float_tensors, stacked_task_vectors
from dgmerge.merging.validate import Param, StateDict


def is_matrix_key(key: str, tensor: Tensor) -> bool:
    """Keys merged in a singular basis: 2-D, except CLIP's text projection (reference rule)."""
    return tensor.dim() == 2 and "text_projection" not in key


def thin_svd(matrix: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD U, S, Vᵀ of one or a batch of matrices.

    Wide matrices are decomposed through their transpose: LAPACK's divide-and-conquer SVD is
    several times slower on wide than on tall inputs (21 s vs 2.6 s for 768×3072 here).
    """
    if matrix.shape[-2] < matrix.shape[-1]:
        v, s, uh = torch.linalg.svd(matrix.mT, full_matrices=False)
        return uh.mT, s, v.mT
    return torch.linalg.svd(matrix, full_matrices=False)


def polar_factor(matrix: Tensor) -> Tensor:
    """The closest matrix with orthonormal columns (rows, if wide): P Qᵀ of the thin SVD P Σ Qᵀ."""
    p, _, qh = thin_svd(matrix)
    return p @ qh


@dataclass
class SharedBasis:
    """U* (m×r), concatenated leading singular values ŝ (r) and V*ᵀ (r×n) of T task matrices."""

    u: Tensor
    s: Tensor
    vh: Tensor
    per_task: int


def shared_basis(deltas: Tensor) -> SharedBasis | None:
    """The TSV/SCORE basis of [T, m, n] task matrices, or None when k = ⌊r/T⌋ is 0."""
    n_tasks, m, n = deltas.shape
    r = min(m, n)
    k = r // n_tasks
    if k == 0:
        return None
    u, s, vh = thin_svd(deltas)
    u_hat = deltas.new_zeros(m, r)
    s_hat = deltas.new_zeros(r)
    vh_hat = deltas.new_zeros(r, n)
    for i in range(n_tasks):
        u_hat[:, i * k:(i + 1) * k] = u[i, :, :k]
        s_hat[i * k:(i + 1) * k] = s[i, :k]
        vh_hat[i * k:(i + 1) * k, :] = vh[i, :k, :]
    return SharedBasis(polar_factor(u_hat), s_hat, polar_factor(vh_hat), k)


def merge_in_basis(pretrained: StateDict, finetuned: Sequence[StateDict], key: str, scale: float,
                   fallback: list[str], combine: Callable[[SharedBasis, Tensor], Tensor]) -> Tensor:
    """θ0[key] + scale · combine(shared basis, stacked task vectors) for 2-D keys.

    Other keys, and matrices too small for a shared basis (listed in `fallback`), take the
    plain mean of their task vectors.
    """
    deltas = stacked_task_vectors(pretrained, finetuned, key)
    basis = shared_basis(deltas) if is_matrix_key(key, pretrained[key]) else None
    if basis is None:
        if is_matrix_key(key, pretrained[key]):
            fallback.append(key)
        return add_to_base(pretrained[key], deltas.mean(dim=0), scale)
    return add_to_base(pretrained[key], combine(basis, deltas), scale)


@register("tsv", params={
    "scale": Param("float", help="α, the coefficient of the merged task vector (reference: 1.0)"),
})
def tsv(pretrained: StateDict, finetuned: Sequence[StateDict], *, scale: float = 1.0) -> MergedState:
    """TSV-M: ΔW = U* diag(ŝ) V*ᵀ per 2-D key, mean elsewhere; θ = θ0 + α·ΔW.

    When a matrix is too small for the number of models (⌊r/T⌋ = 0) its task vectors are
    averaged instead; such keys are listed in info["fallback_mean"].
    """
    fallback: list[str] = []

    def merged(key: str) -> Tensor:
        return merge_in_basis(pretrained, finetuned, key, scale, fallback,
                              lambda basis, deltas: basis.u @ torch.diag(basis.s) @ basis.vh)

    return map_float_tensors(pretrained, merged, info={"scale": scale, "fallback_mean": fallback})
