"""RHM, HAM's redundancy-aware merging (Eq. 8-13): model-level magnitude trim, masked mean.

For each source i: v_i = θ_i − θ0 over all float tensors, σ_i = the r-quantile of |v_i|
(r = fraction trimmed), m_i = 1[|v_i| > σ_i]; v_merge = Σ m_i v_i / Σ m_i where Σ m_i > 0,
else 0 — no sign election, unlike TIES; θ = θ0 + v_merge. Historical averaging (Eq. 7) is
done during training, see `trajectory.HistoricalAverage`.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from dgmerge.merging.registry import MergedState, register
from dgmerge.merging.task_vectors import float_keys, masked_mean, merge_pieces
from dgmerge.merging.ties import TRIM_PARAMS
from dgmerge.merging.trimming import magnitude_mask, magnitude_sigmas, rank_to_trim
from dgmerge.merging.validate import Param, StateDict


def rhm(pretrained: StateDict, finetuned: Sequence[StateDict], *, trim: float = 0.2, scale: float = 1.0,
        level: str = "model", threshold: str = "exact", sample_size: int = 10_000_000,
        seed: int = 0) -> MergedState:
    """HAM's RHM: trim each model's update below its r-quantile of |v|, masked mean, θ0 + v_merge.

    σ_i is the k-th smallest |v_i| with k = ⌊r·n⌋ (at least 1), computed exactly by streamed
    radix selection, or estimated from `sample_size` sampled entries (threshold="sampled")
    with its measured rank error in `info["thresholds"]`. level="tensor" is the layer-level
    ablation (σ per tensor). trim=0 means no trimming: the plain mean of the task vectors.
    """
    keys = float_keys(pretrained)
    info: dict = {"trim": trim, "scale": scale, "level": level}
    sigma_model, sigma_tensor = None, None
    if trim > 0:
        sigma_model, sigma_tensor = magnitude_sigmas(pretrained, finetuned, keys, lambda n: rank_to_trim(n, trim), level,
                                                     threshold, sample_size, seed, info)

    def combine(key: str, part: slice, vectors: Tensor) -> Tensor:
        if trim == 0:
            return vectors.mean(dim=0)
        sigma = sigma_model if sigma_model is not None else sigma_tensor[key]
        return masked_mean(vectors, magnitude_mask(vectors, sigma, strict=True))

    return merge_pieces(pretrained, finetuned, combine, scale, info=info)


# Registered by a call, not a decorator: mutmut (docs/testing.md) cannot mutate decorated functions.
rhm = register("rhm", params={
    "trim": Param("float", 0, 1, high_open=True, help="r, the fraction of each update vector trimmed, in [0, 1)"),
    "scale": Param("float", help="coefficient of v_merge (HAM uses 1)"),
    **TRIM_PARAMS,
})(rhm)
