"""LwPTV-style (reconstructed): a layer-wise mask on task vectors in front of any merge method.

Only the LwPTV abstract (arXiv 2506.09093) is available: a saliency score per task and
layer yields a mask; at a pruned layer the merged model keeps θ0. The saliency formula,
threshold and granularity below are our reconstruction (../shared/docs/lwptv-score-and-peers.md),
NOT the paper's method, and results must be reported as "LwPTV-style (reconstructed)":

- saliency="relative": s_t^l = ‖τ_t^l‖ / ‖θ0^l‖ (relative update size);
- saliency="share":    s_t^l = ‖τ_t^l‖ / Σ_k ‖τ_k^l‖ (the task's share of the layer);
- m_t^l = 1[s_t^l ≥ η] (prune="below": low-saliency layers are pruned) or 1[s_t^l ≤ η];
- unit="block" groups a transformer block's tensors into one layer; "tensor" = each tensor;
- mode="before" runs the base method on θ0 + m_t τ_t; mode="after" runs it on the unmasked
  models and resets to θ0 the layers where every task's mask is 0.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from dgmerge.merging.registry import MergedState, register, run_unchecked
from dgmerge.merging.task_vectors import DerivedStateDict, float_keys, layer_units, stacked_task_vectors
from dgmerge.merging.validate import MergeError, Param, StateDict


def layer_saliency(pretrained: StateDict, finetuned: Sequence[StateDict], units: dict[str, list[str]],
                   saliency: str) -> dict[str, list[float]]:
    """Per layer unit, one saliency score per fine-tuned model (streamed tensor by tensor)."""
    scores: dict[str, list[float]] = {}
    for unit, keys in units.items():
        tau_sq = torch.zeros(len(finetuned), dtype=torch.float64)
        base_sq = 0.0
        for key in keys:
            vectors = stacked_task_vectors(pretrained, finetuned, key)
            tau_sq += vectors.reshape(len(finetuned), -1).double().pow(2).sum(dim=1)
            base_sq += float(pretrained[key].double().pow(2).sum())
        norms = tau_sq.sqrt().tolist()
        if saliency == "relative":
            base = math.sqrt(base_sq)
            scores[unit] = [n / base if base > 0 else (math.inf if n > 0 else 0.0) for n in norms]
        else:
            total = sum(norms)
            scores[unit] = [n / total if total > 0 else 0.0 for n in norms]
    return scores


def layer_masks(scores: dict[str, list[float]], eta: float, prune: str) -> dict[str, list[bool]]:
    """m_t^l: keep a task's layer when its saliency is on the kept side of η."""
    if prune == "below":
        return {u: [s >= eta for s in row] for u, row in scores.items()}
    return {u: [s <= eta for s in row] for u, row in scores.items()}


@register("lwptv", base_param="base", params={
    "eta": Param("float", 0, None, required=True, help="saliency threshold η ≥ 0 (tune on ID validation)"),
    "base": Param("str", help="the merge method run behind the mask (task_arithmetic, ties, rhm, ...)"),
    "saliency": Param("str", choices=("relative", "share"), help="saliency score, see module docs"),
    "unit": Param("str", choices=("block", "tensor"), help="layer unit: transformer block or tensor"),
    "prune": Param("str", choices=("below", "above"), help="prune layers with saliency below or above η"),
    "mode": Param("str", choices=("before", "after"), help="mask task vectors before the base method, "
                                                            "or reset all-pruned layers after it"),
})
def lwptv(pretrained: StateDict, finetuned: Sequence[StateDict], *, eta: float, base: str = "task_arithmetic",
          saliency: str = "relative", unit: str = "block", prune: str = "below", mode: str = "before",
          **base_hparams: Any) -> MergedState:
    """LwPTV-style (reconstructed) layer-wise task-vector pruning in front of the `base` method.

    Extra keyword arguments go to the base method. info["masks"] maps each layer unit to
    its per-task keep flags; info["pruned_units"] lists units kept at θ0 for every task.
    """
    if base in ("lwptv", "greedy_soup"):
        raise MergeError(f"lwptv: base={base!r} is not supported; use task_arithmetic, ties, rhm, ...")
    units = layer_units(float_keys(pretrained), unit)
    scores = layer_saliency(pretrained, finetuned, units, saliency)
    masks = layer_masks(scores, eta, prune)
    unit_of = {key: u for u, keys in units.items() for key in keys}
    pruned = [u for u, row in masks.items() if not any(row)]

    if mode == "before":
        views = []
        for index, state in enumerate(finetuned):
            def compute(key: str, state: StateDict = state, index: int = index):
                u = unit_of.get(key)
                return state[key] if u is None or masks[u][index] else pretrained[key]
            views.append(DerivedStateDict(list(pretrained.keys()), compute))
        result = run_unchecked(base, pretrained, views, **base_hparams)
    else:
        result = run_unchecked(base, pretrained, finetuned, **base_hparams)
        for u in pruned:
            for key in units[u]:
                result[key] = pretrained[key].clone()
    result.info = {"name": "LwPTV-style (reconstructed)", "base": base, "eta": eta, "saliency": saliency,
                   "unit": unit, "prune": prune, "mode": mode, "scores": scores,
                   "masks": {u: [int(m) for m in row] for u, row in masks.items()},
                   "pruned_units": pruned, "base_info": result.info}
    return result
