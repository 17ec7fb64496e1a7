"""SAE, HAM's sample conflict-aware adaptive source enrichment (Eq. 2-3), as pure functions.

For source i: τ_i = mean over its own batch B_i of the max softmax probability of f_i;
B'_i = B_i ∪ {(x, y) ∈ B_j, j ≠ i : max softmax f_i(x) > τ_i}, labels kept. The trainer
computes the confidences; this module only decides which samples are borrowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import Tensor


def max_confidence(logits: Tensor) -> Tensor:
    """max_c softmax(logits)_c per row, detached: SAE's confidence, never part of the gradient."""
    return logits.detach().softmax(dim=1).max(dim=1).values


@dataclass
class Selection:
    """What one source borrows in one step: its threshold and, per foreign domain, batch indices."""

    tau: float
    threshold: float
    indices: dict[str, Tensor] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Borrowed samples per foreign domain."""
        return {name: int(idx.numel()) for name, idx in self.indices.items()}

    @property
    def total(self) -> int:
        """Borrowed samples over all foreign domains."""
        return sum(self.counts().values())


def select_confident(own_confidence: Tensor, foreign_confidence: Mapping[str, Tensor],
                     margin: float = 0.0, max_borrow: int | None = None) -> Selection:
    """Indices of the foreign samples that f_i is more confident about than about its own batch.

    Borrow x when confidence(x) > τ_i + margin (strictly, as Eq. 3). With `max_borrow`, keep at
    most that many per foreign domain: the most confident ones, ties by batch order, returned
    in batch order so the enriched batch keeps the stream's order.
    """
    if own_confidence.numel() == 0:
        raise ValueError("SAE needs a non-empty own batch to set τ_i")
    # Compare in the confidences' own dtype: a float64 threshold could flip exact ties.
    tau = own_confidence.mean()
    threshold = tau + margin
    chosen: dict[str, Tensor] = {}
    for name, confidence in foreign_confidence.items():
        idx = torch.nonzero(confidence > threshold).flatten()
        if max_borrow is not None and idx.numel() > max_borrow:
            order = torch.sort(confidence[idx], descending=True, stable=True).indices[:max_borrow]
            idx = idx[order].sort().values
        chosen[name] = idx
    return Selection(tau=float(tau), threshold=float(threshold), indices=chosen)


__all__ = ["Selection", "max_confidence", "select_confident"]
