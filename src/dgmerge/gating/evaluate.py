"""Build each merge variant of a model pool and score it per task, with manual and automatic heads.

Manual head: the task's own classifier (Ye et al.'s "manual classifier" rows; the gated
layers still follow P(x)). Automatic: the classifier of argmax P(x); a prediction counts
as correct when the chosen head's class name equals the true class name, so picking the
wrong task's head is an error whenever the label spaces differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dgmerge.device import module_device
from dgmerge.gating.combine import (
    base_merge,
    build_gated,
    candidate_modules,
    candidate_similarities,
    gated_module_names,
    least_similar,
)
from dgmerge.gating.counting import model_cost
from dgmerge.gating.gate import Gate
from dgmerge.gating.gated_model import GatedClassifier
from dgmerge.models.backbone import Backbone
from dgmerge.models.stages import Cut

StateDict = dict[str, torch.Tensor]
PLAIN = ("average", "regmean", "task_arithmetic")
LABELS = {"average": "AvgMean", "regmean": "RegMean", "task_arithmetic": "Task Arithmetic"}


@dataclass(frozen=True)
class Variant:
    """A merge: its base method, and m (None = plain merge, no gating)."""

    base: str
    m: int | None = None

    @property
    def label(self) -> str:
        name = LABELS[self.base]
        return name if self.m is None else f"Ours + {name}, m = {self.m}"


def variants(ms: Sequence[int], gating_bases: Sequence[str] = ("average", "regmean")) -> list[Variant]:
    """The plain merges, then gating + each base for every m (Ye et al.'s row order)."""
    return [Variant(b) for b in PLAIN] + [Variant(b, m) for b in gating_bases for m in ms]


@dataclass
class Setting:
    """θ0's backbone, where its trainable suffix starts (cut) and its trainable encoder tensors."""

    backbone: Backbone
    cut: Cut
    trainable: list[str]


@dataclass
class Pool:
    """A model pool: θ0's classifier state, the experts' states, their heads and tasks, the gate."""

    setting: Setting
    theta0: StateDict
    experts: list[StateDict]
    heads: list[nn.Module]
    task_classes: list[list[str]]
    gate: Gate
    grams: list[StateDict] | None = None
    scale: float = 0.5  # Task Arithmetic λ
    alpha: float = 0.9  # RegMean's off-diagonal Gram scale

    def similarities(self) -> dict[str, float]:
        """Eq. 4 weight similarity of every candidate block over the experts."""
        enc = self.setting.backbone.encoder
        return candidate_similarities(self.experts, self._candidates(enc))

    def _candidates(self, encoder: nn.Module) -> dict[str, list[str]]:
        bb = self.setting.backbone
        return candidate_modules(encoder, bb.blocks, bb.tail, self.setting.trainable)

    def build(self, variant: Variant, *, gate_norms: bool = True, mode: str = "sample") -> GatedClassifier:
        """The merged model of `variant`, reading activations at the cut."""
        keys = [f"encoder.{n}" for n in self.setting.trainable]
        merged = base_merge(variant.base, self.theta0, self.experts, keys, grams=self.grams, scale=self.scale,
                            alpha=self.alpha)
        gated: list[str] = []
        if variant.m is not None:
            enc = self.setting.backbone.encoder
            chosen = least_similar(self.similarities(), variant.m)
            gated = gated_module_names(enc, self._candidates(enc), chosen, self.setting.trainable, gate_norms)
        return build_gated(self.setting.backbone.encoder, merged, self.experts, gated, self.gate, self.heads,
                           self.task_classes, cut=self.setting.cut, mode=mode, inputs="activations").eval()

    def cost(self, model: GatedClassifier, with_gate: bool) -> dict[str, float]:
        """Params and FLOPs of `model` for one 224 px image (see counting.py)."""
        image = torch.zeros(1, 3, self.setting.backbone.image_size, self.setting.backbone.image_size)
        suffix = [n for n in (*self.setting.backbone.blocks, *self.setting.backbone.tail)
                  if any(t.startswith(n + ".") for t in self.setting.trainable)]
        return model_cost(model, self.setting.backbone.encoder, image, suffix, with_gate=with_gate)


@torch.no_grad()
def score(model: GatedClassifier, data: Dataset, probs: torch.Tensor, task: int, batch_size: int) -> dict[str, float]:
    """{"manual": acc with head `task`, "auto": acc with head argmax P(x), "routed": share routed to `task`}."""
    counts = {"manual": 0, "auto": 0, "routed": 0}
    total = 0
    own = model.task_classes[task]
    device = module_device(model)
    for start, (x, y) in zip(range(0, len(probs), batch_size), DataLoader(data, batch_size=batch_size)):
        x, y = x.to(device), torch.as_tensor(y).to(device)
        p = probs[start:start + len(x)].to(device)
        feats = model.features(x, p)
        counts["manual"] += int((model.heads[task](feats).argmax(dim=1) == y).sum())
        chosen = p.argmax(dim=1)
        for k, head in enumerate(model.heads):
            rows = (chosen == k).nonzero().flatten()
            if len(rows) == 0:
                continue
            names = [model.task_classes[k][int(i)] for i in head(feats[rows]).argmax(dim=1)]
            counts["auto"] += sum(n == own[int(y[r])] for n, r in zip(names, rows.tolist()))
        counts["routed"] += int((chosen == task).sum())
        total += len(x)
    return {k: v / total for k, v in counts.items()}
