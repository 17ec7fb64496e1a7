"""Task arithmetic (Ilharco et al.): θ = θ0 + λ Σ_i τ_i."""

from __future__ import annotations

from typing import Sequence

from dgmerge.merging.registry import MergedState, register
from dgmerge.merging.task_vectors import add_to_base, map_float_tensors, stacked_task_vectors
from dgmerge.merging.validate import Param, StateDict


@register("task_arithmetic", params={
    "scale": Param("float", help="λ, the coefficient of the summed task vectors (1/N = averaging)"),
})
def task_arithmetic(pretrained: StateDict, finetuned: Sequence[StateDict], *,
                    scale: float = 1.0) -> MergedState:
    """Task arithmetic: θ0 + λ Σ_i (θ_i − θ0). λ = 1/N reproduces plain averaging."""

    def merged(key: str):
        vectors = stacked_task_vectors(pretrained, finetuned, key)
        return add_to_base(pretrained[key], vectors.sum(dim=0), scale)

    return map_float_tensors(pretrained, merged, info={"scale": scale})
