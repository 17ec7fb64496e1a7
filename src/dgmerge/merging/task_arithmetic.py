"""Task arithmetic (Ilharco et al.): θ = θ0 + λ Σ_i τ_i."""

from __future__ import annotations

from typing import Sequence

from dgmerge.merging.registry import MergedState, register
from dgmerge.merging.task_vectors import merge_pieces
from dgmerge.merging.validate import Param, StateDict


@register("task_arithmetic", params={
    "scale": Param("float", help="λ, the coefficient of the summed task vectors (1/N = averaging)"),
})
def task_arithmetic(pretrained: StateDict, finetuned: Sequence[StateDict], *,
                    scale: float = 1.0) -> MergedState:
    """Task arithmetic: θ0 + λ Σ_i (θ_i − θ0). λ = 1/N reproduces plain averaging."""
    return merge_pieces(pretrained, finetuned, lambda key, part, vectors: vectors.sum(dim=0), scale,
                        info={"scale": scale})
