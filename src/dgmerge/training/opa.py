"""OPA, HAM's optimization conflict-aware parameter alignment (Eq. 5), as pure functions.

v_i^l = θ_i^l − θ0^l for each trainable tensor l; v̄^l = mean_i v_i^l, detached. The sign loss
penalises the part of v_i that points against v̄, so the source models' updates agree in sign
when they are merged (TIES-style cancellation is what it prevents).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

OpaMode = Literal["elementwise", "dot"]


def update_vector(params: Sequence[Tensor], theta0: Sequence[Tensor]) -> list[Tensor]:
    """v = θ − θ0 per tensor, detached (the inputs of v̄ and of the conflict rate)."""
    with torch.no_grad():
        return [p.detach() - p0 for p, p0 in zip(params, theta0)]


def mean_update(updates: Sequence[Sequence[Tensor]]) -> list[Tensor]:
    """v̄^l = mean over models of v_i^l, for each tensor l."""
    if not updates:
        raise ValueError("mean_update needs at least one model's update vector")
    with torch.no_grad():
        return [torch.stack(layer).mean(dim=0) for layer in zip(*updates)]


def sign_loss(params: Sequence[Tensor], theta0: Sequence[Tensor], mean: Sequence[Tensor],
              mode: OpaMode = "elementwise") -> Tensor:
    """L_sign = (1/N_L) Σ_l penalty_l, differentiable in `params` (v̄ = `mean` is a constant).

    elementwise: penalty_l = Σ_elem max(0, −v_i^l ⊙ v̄^l) (ham-spec default);
    dot:         penalty_l = max(0, −⟨v_i^l, v̄^l⟩).
    Both give gradient −v̄/N_L on the active elements (or tensors).
    """
    if not params:
        raise ValueError("sign_loss needs at least one trainable tensor")
    if mode not in ("elementwise", "dot"):
        raise ValueError(f"unknown OPA mode {mode!r}: use elementwise or dot")
    penalties = []
    for p, p0, vbar in zip(params, theta0, mean, strict=True):
        product = (p - p0) * vbar.detach()
        penalties.append(F.relu(-product).sum() if mode == "elementwise" else F.relu(-product.sum()))
    return torch.stack(penalties).mean()


def mean_update_and_conflicts(params: Sequence[Sequence[Tensor]],
                              theta0: Sequence[Tensor]) -> tuple[list[Tensor], list[float]]:
    """v̄ and each model's sign-conflict rate against it, from every model's current weights.

    Same values as mean_update + sign_conflict_rate, computed one tensor at a time so only
    v̄ (one model's size) is kept, not all N_S update vectors.
    """
    if not params:
        raise ValueError("mean_update_and_conflicts needs at least one model")
    with torch.no_grad():
        mean: list[Tensor] = []
        conflicts = [0] * len(params)
        total = 0
        for layer, p0 in enumerate(theta0):
            updates = [model[layer].detach() - p0 for model in params]
            layer_mean = torch.stack(updates).mean(dim=0)
            for i, update in enumerate(updates):
                conflicts[i] += int(((update * layer_mean) < 0).sum())
            total += p0.numel()
            mean.append(layer_mean)
        return mean, [c / total if total else 0.0 for c in conflicts]


def sign_conflict_rate(update: Sequence[Tensor], mean: Sequence[Tensor]) -> float:
    """Fraction of elements where v_i and v̄ have strictly opposite signs (v_i ⊙ v̄ < 0).

    Zeros are not conflicts: at θ0 every update is zero and nothing can cancel.
    """
    with torch.no_grad():
        conflicts = sum(int(((u * m) < 0).sum()) for u, m in zip(update, mean, strict=True))
        total = sum(u.numel() for u in update)
        return conflicts / total if total else 0.0


__all__ = ["OpaMode", "mean_update", "mean_update_and_conflicts", "sign_conflict_rate", "sign_loss", "update_vector"]
