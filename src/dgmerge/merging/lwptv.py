"""LwPTV-style (reconstructed): a layer-wise mask on task vectors in front of any merge method.

Only the LwPTV abstract (arXiv 2506.09093) is available: a saliency score per task and
layer yields a mask; at a pruned layer the merged model keeps θ0. The saliency formula,
threshold and granularity below are our reconstruction (../shared/docs/lwptv-score-and-peers.md),
NOT the paper's method, and results must be reported as "LwPTV-style (reconstructed)":

- saliency="relative": s_t^l = ‖τ_t^l‖ / ‖θ0^l‖ (relative update size);
- saliency="share":    s_t^l = ‖τ_t^l‖ / Σ_k ‖τ_k^l‖ (the task's share of the layer);
- threshold="fraction" (default): η ∈ [0, 1] is the fraction of each task's layers that is
  pruned: task t prunes its ⌊η·L_t⌋ lowest-saliency layers (prune="below") or highest
  ("above"), L_t = the layers the task changed; ties go by layer order;
- threshold="absolute": m_t^l = 1[s_t^l ≥ η] (prune="below") or 1[s_t^l ≤ η] (the doc's rule);
- unit="block" groups a transformer block's tensors into one layer; "tensor" = each tensor;
- mode="before" runs the base method on θ0 + m_t τ_t; mode="after" runs it on the unmasked
  models and resets to θ0 the layers where every task's mask is 0.

Why "fraction" is the default: the saliency scores are not scale-free. The relative score
‖τ‖/‖θ0‖ grows with learning rate × steps and shrinks with the weights' norm; on PACS with
ImageNet MobileNetV2 (100 AdamW steps at lr 1e-4, last two stages + conv_head trained) every
stage scores ≈ 0.002 and no tensor exceeds 0.035, so an absolute η = 0.05 pruned every layer
of every task and the merge returned θ0 exactly. The share score sits near 1/T for similar
tasks, so its useful η depends on T. A rank-based η means the same thing on every model and
training budget. Layers no task changed (frozen tensors, BN running statistics) are left out
of the ranking and of the kept/pruned counts: pruning them is a no-op. When every changed
layer is pruned for every task the result is θ0; info["all_pruned"] is set and a
RuntimeWarning is issued. The opposite case warns too: an η > 0 that prunes no layer of any
task (a fraction of fewer than 1/η layers rounds down to none, as η = 0.2 of the 4 layer units
of the PACS bench's MobileNetV2 suffix) leaves the base method's merge unchanged;
info["none_pruned"] is set and the warning says which η or unit would prune.
"""

from __future__ import annotations

import math
import warnings
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
        device = pretrained[keys[0]].device
        tau_sq = torch.zeros(len(finetuned), dtype=torch.float64, device=device)
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
    """m_t^l for an absolute η: keep a task's layer when its saliency is on the kept side of η."""
    if prune == "below":
        return {u: [s >= eta for s in row] for u, row in scores.items()}
    return {u: [s <= eta for s in row] for u, row in scores.items()}


def fraction_masks(scores: dict[str, list[float]], changed: dict[str, list[bool]], eta: float,
                   prune: str) -> dict[str, list[bool]]:
    """m_t^l for a rank-based η: each task prunes ⌊η·L_t⌋ of the L_t layers it changed.

    The lowest-saliency layers go first (prune="below"), or the highest ("above"); equal
    scores go by layer order (stable sort). Layers a task did not change get mask 0 (their
    task vector is zero, so the mask makes no difference).
    """
    units = list(scores)
    n_tasks = len(next(iter(scores.values()))) if scores else 0
    masks = {u: [False] * n_tasks for u in units}
    for task in range(n_tasks):
        ranked = [u for u in units if changed[u][task]]
        ranked.sort(key=lambda u: scores[u][task], reverse=(prune == "above"))
        # The small epsilon keeps e.g. 0.3·10 = 2.9999999999999996 from rounding down to 2.
        n_pruned = min(len(ranked), math.floor(eta * len(ranked) + 1e-9))
        for u in ranked[n_pruned:]:
            masks[u][task] = True
    return masks


@register("lwptv", base_param="base", params={
    "eta": Param("float", 0, None, required=True,
                 help="threshold=fraction: share of each task's layers pruned, in [0, 1]; "
                      "threshold=absolute: saliency threshold η ≥ 0 (tune on ID validation)"),
    "threshold": Param("str", choices=("fraction", "absolute"),
                       help="how η is read: a fraction of layers (scale-free) or a saliency value"),
    "base": Param("str", help="the merge method run behind the mask (task_arithmetic, ties, rhm, ...)"),
    "saliency": Param("str", choices=("relative", "share"), help="saliency score, see module docs"),
    "unit": Param("str", choices=("block", "tensor"), help="layer unit: transformer block or tensor"),
    "prune": Param("str", choices=("below", "above"), help="prune layers with saliency below or above η"),
    "mode": Param("str", choices=("before", "after"), help="mask task vectors before the base method, "
                                                            "or reset all-pruned layers after it"),
})
def lwptv(pretrained: StateDict, finetuned: Sequence[StateDict], *, eta: float, threshold: str = "fraction",
          base: str = "task_arithmetic", saliency: str = "relative", unit: str = "block", prune: str = "below",
          mode: str = "before", **base_hparams: Any) -> MergedState:
    """LwPTV-style (reconstructed) layer-wise task-vector pruning in front of the `base` method.

    Extra keyword arguments go to the base method. info["masks"] maps each layer unit to
    its per-task keep flags; among the layers some task changed, info["pruned_units"] lists
    those kept at θ0 for every task, info["n_kept"] / info["n_pruned"] count kept and pruned
    layers and info["pruned_per_task"] counts each task's pruned layers. info["all_pruned"]
    is True (with a RuntimeWarning) when the merge returned θ0 because everything was pruned.
    """
    if base in ("lwptv", "greedy_soup"):
        raise MergeError(f"lwptv: base={base!r} is not supported; use task_arithmetic, ties, rhm, ...")
    if threshold == "fraction" and eta > 1:
        raise MergeError(f"lwptv: eta={eta!r} with threshold='fraction' is the share of layers pruned "
                         "and must be in [0, 1]; pass threshold='absolute' for a saliency value")
    units = layer_units(float_keys(pretrained), unit)
    scores = layer_saliency(pretrained, finetuned, units, saliency)
    # Both saliency scores are 0 exactly when τ_t^l = 0 (the task did not change the unit).
    changed = {u: [s > 0 for s in row] for u, row in scores.items()}
    if threshold == "fraction":
        masks = fraction_masks(scores, changed, eta, prune)
    else:
        masks = layer_masks(scores, eta, prune)
    unit_of = {key: u for u, keys in units.items() for key in keys}
    trained = [u for u, flags in changed.items() if any(flags)]
    # A unit counts as pruned when no task keeps a change there, so it ends at θ0.
    pruned = [u for u in trained if not any(m and c for m, c in zip(masks[u], changed[u]))]
    pruned_per_task = [sum(1 for u in trained if changed[u][t] and not masks[u][t])
                       for t in range(len(finetuned))]
    all_pruned = bool(trained) and len(pruned) == len(trained)

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
    result.info = {"name": "LwPTV-style (reconstructed)", "base": base, "eta": eta, "threshold": threshold,
                   "saliency": saliency, "unit": unit, "prune": prune, "mode": mode, "scores": scores,
                   "masks": {u: [int(m) for m in row] for u, row in masks.items()},
                   "pruned_units": pruned, "n_units": len(trained), "n_kept": len(trained) - len(pruned),
                   "n_pruned": len(pruned), "n_unchanged": len(units) - len(trained),
                   "pruned_per_task": pruned_per_task, "all_pruned": all_pruned, "base_info": result.info}
    if all_pruned:
        message = (f"lwptv: every one of the {len(trained)} changed layer(s) was pruned for every task "
                   f"(eta={eta}, threshold={threshold!r}, saliency={saliency!r}); the merged model is θ0. "
                   f"Saliency scores range {_score_range(scores, changed)}.")
        result.info["warning"] = message
        warnings.warn(message, RuntimeWarning, stacklevel=3)  # the caller of merge()
    elif eta > 0 and trained and not any(pruned_per_task):
        result.info["none_pruned"] = True
        result.info["warning"] = _none_pruned(eta, threshold, unit, saliency, scores, changed, base)
        warnings.warn(result.info["warning"], RuntimeWarning, stacklevel=3)
    return result


def _none_pruned(eta: float, threshold: str, unit: str, saliency: str, scores: dict[str, list[float]],
                 changed: dict[str, list[bool]], base: str) -> str:
    """Why a mask with η > 0 kept every layer, and what would make it prune (the merge is `base`'s)."""
    if threshold == "fraction":
        n_tasks = len(next(iter(changed.values())))
        most = max(sum(changed[u][t] for u in changed) for t in range(n_tasks))
        why = (f"each task changed at most {most} layer unit(s) (unit={unit!r}) and floor(eta·{most}) = 0; "
               f"use unit='tensor' or an eta of at least {1 / most:.3g}")
    else:
        why = f"no saliency ({saliency!r}) is on the pruned side of eta; scores range {_score_range(scores, changed)}"
    return f"lwptv: eta={eta} prunes no layer of any task: {why}. The merge equals {base!r} alone."


def _score_range(scores: dict[str, list[float]], changed: dict[str, list[bool]]) -> str:
    """The [min, max] of the saliency of changed (task, layer) pairs, to help choose η."""
    values = [s for u, row in scores.items() for s, c in zip(row, changed[u]) if c]
    return f"[{min(values):.3g}, {max(values):.3g}]" if values else "empty"
