"""TIES-merging (Yadav et al.): trim each task vector, elect signs by mass, disjoint mean, scale."""

from __future__ import annotations

from typing import Sequence

from dgmerge.merging.registry import MergedState, register
from dgmerge.merging.task_vectors import (add_to_base, disjoint_aggregate, elect_sign, float_keys,
                                          map_float_tensors, stacked_task_vectors)
from dgmerge.merging.trimming import (broadcastable, magnitude_mask, model_thresholds, rank_to_keep,
                                      tensor_thresholds, threshold_info)
from dgmerge.merging.validate import Param, StateDict

TRIM_PARAMS = {
    "level": Param("str", choices=("model", "tensor"),
                   help="threshold over the whole model's concatenated task vector, or per tensor"),
    "threshold": Param("str", choices=("exact", "sampled"),
                       help="exact k-th value (streamed radix select) or a sampled estimate"),
    "sample_size": Param("int", 1, None, help="sample size of the sampled estimate"),
    "seed": Param("int", help="seed of the sampled estimate"),
}


@register("ties", params={
    "keep": Param("float", 0, 1, low_open=True, help="k, the fraction of each task vector kept, in (0, 1]"),
    "scale": Param("float", help="λ applied to the merged task vector"),
    "aggregate": Param("str", choices=("mean", "sum"), help="disjoint mean (TIES) or disjoint sum"),
    **TRIM_PARAMS,
})
def ties(pretrained: StateDict, finetuned: Sequence[StateDict], *, keep: float = 0.2, scale: float = 1.0,
         level: str = "model", aggregate: str = "mean", threshold: str = "exact",
         sample_size: int = 10_000_000, seed: int = 0) -> MergedState:
    """TIES: keep the top `keep` fraction of each |τ_i|, elect signs by mass, disjoint mean, θ0 + λ·τ.

    level="model" ranks each model's entries over all its float tensors at once, as the
    reference code does on the flattened model; level="tensor" ranks within each tensor.
    An entry survives when |τ| ≥ σ (the reference code's rule); keep=1 keeps everything.
    Zero-sum entries take the tensor's majority sign.
    """
    keys = float_keys(pretrained)
    info: dict = {"keep": keep, "scale": scale, "level": level, "aggregate": aggregate}
    sigma_model = None
    if keep < 1.0 and level == "model":
        thresholds = model_thresholds(pretrained, finetuned, keys, lambda n: rank_to_keep(n, keep),
                                      threshold, sample_size, seed)
        info["thresholds"] = threshold_info(thresholds)
        sigma_model = [t.value for t in thresholds]

    def merged(key: str):
        vectors = stacked_task_vectors(pretrained, finetuned, key)
        if keep < 1.0:
            if sigma_model is not None:
                sigma = broadcastable(sigma_model, vectors)
            else:
                sigma = tensor_thresholds(vectors, lambda n: rank_to_keep(n, keep))
            vectors = vectors * magnitude_mask(vectors, sigma, strict=False)
        combined = disjoint_aggregate(vectors, elect_sign(vectors), aggregate)
        return add_to_base(pretrained[key], combined, scale)

    return map_float_tensors(pretrained, merged, info=info)
