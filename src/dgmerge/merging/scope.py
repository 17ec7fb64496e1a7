"""Merging only some tensors: the trained ones of partially fine-tuned models.

With `last:N` fine-tuning most tensors have zero task vectors. Model-level methods (RHM,
TIES) take a quantile over the whole concatenated update, so those zeros would fill the
trimmed fraction and trim nothing real; merging only the trained tensors keeps the
threshold about the update that exists, and leaves every other tensor exactly θ0's.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor

from dgmerge.merging.registry import MergedState, merge

StateDict = dict[str, Tensor]


def merge_subset(method: str, pretrained: StateDict, finetuned: Sequence[StateDict], keys: Sequence[str] | None,
                 **hparams: Any) -> MergedState:
    """merge(method, ...) over `keys` only (None = all); other tensors are copied from `pretrained`."""
    if keys is None:
        return merge(method, pretrained, list(finetuned), **hparams)
    missing = [k for k in keys if k not in pretrained]
    if missing:
        raise KeyError(f"keys to merge are not in the pretrained state: {missing[:5]}")
    part = merge(method, {k: pretrained[k] for k in keys}, [{k: s[k] for k in keys} for s in finetuned], **hparams)
    merged = MergedState({k: v.clone() for k, v in pretrained.items()}, info={**part.info, "scope": "subset",
                                                                               "merged_tensors": len(keys)})
    merged.update(part)
    return merged
