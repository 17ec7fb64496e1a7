"""RHM, HAM's redundancy-aware merging (Eq. 8-13): model-level magnitude trim, masked mean.

For each source i: v_i = θ_i − θ0 over all float tensors, σ_i = the r-quantile of |v_i|
(r = fraction trimmed), m_i = 1[|v_i| > σ_i]; v_merge = Σ m_i v_i / Σ m_i where Σ m_i > 0,
else 0 — no sign election, unlike TIES; θ = θ0 + v_merge. Historical averaging (Eq. 7) is
done during training, see `trajectory.HistoricalAverage`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from dgmerge.merging.registry import MergedState, register
from dgmerge.merging.task_vectors import (add_to_base, float_keys, map_float_tensors, masked_mean,
                                          stacked_task_vectors)
from dgmerge.merging.ties import TRIM_PARAMS
from dgmerge.merging.trimming import (broadcastable, magnitude_mask, model_thresholds, rank_to_trim,
                                      tensor_thresholds, threshold_info)
from dgmerge.merging.validate import Param, StateDict


@register("rhm", params={
    "trim": Param("float", 0, 1, high_open=True, help="r, the fraction of each update vector trimmed, in [0, 1)"),
    "scale": Param("float", help="coefficient of v_merge (HAM uses 1)"),
    **TRIM_PARAMS,
})
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
    sigma_model = None
    if trim > 0 and level == "model":
        thresholds = model_thresholds(pretrained, finetuned, keys, lambda n: rank_to_trim(n, trim),
                                      threshold, sample_size, seed)
        info["thresholds"] = threshold_info(thresholds)
        sigma_model = [t.value for t in thresholds]

    def merged(key: str):
        vectors = stacked_task_vectors(pretrained, finetuned, key)
        if trim == 0:
            mask = torch.ones(vectors.shape, dtype=torch.bool)
        else:
            if sigma_model is not None:
                sigma = broadcastable(sigma_model, vectors)
            else:
                sigma = tensor_thresholds(vectors, lambda n: rank_to_trim(n, trim))
            mask = magnitude_mask(vectors, sigma, strict=True)
        return add_to_base(pretrained[key], masked_mean(vectors, mask), scale)

    return map_float_tensors(pretrained, merged, info=info)
