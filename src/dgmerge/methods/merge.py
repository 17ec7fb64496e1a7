"""Every entry of `merges:` applied to the single-source models, over the trained tensors only.

The merges in MERGES_NEEDING_DATA need data besides the models; this method feeds them from
the cell, never from the test domain:
- regmean: Gram matrices of the inputs to each source model's trained linear layers and 1×1
  convolutions (attention input projections too), on that source's own training split;
  depthwise and k×k convolutions, norms and biases are averaged by RegMean itself;
- fisher: each source model's diagonal Fisher of its trained tensors, on its own training split;
- greedy_soup: models ordered by, and soups accepted on, the mean accuracy over the sources'
  validation (out) splits — the same source validation every row reports.
Statistics use `spec.batches` batches of train.batch_size images, shuffled by the trial seed;
they are collected once per source model and setting, and shared by every entry that needs
them (two RegMean entries with different α collect one set of Grams).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from dgmerge.device import module_device
from dgmerge.config import MERGES_NEEDING_DATA, MergeSpec
from dgmerge.merging.registry import MergedState
from dgmerge.merging.scope import merge_subset
from dgmerge.merging.statistics import collect_fisher, collect_gram
from dgmerge.methods.cell import Cell, Row, SourceRun
from dgmerge.methods.registry import register_experiment
from dgmerge.models.accuracy import accuracy
from dgmerge.models.classifier import Classifier

StateDict = dict[str, torch.Tensor]


@register_experiment("merge", order=30, summary="merge the single-source models with each entry of `merges:`",
                     settings=("merges", "train.batch_size"))
def run(cell: Cell) -> list[Row]:
    """One row merge:<name> per merge spec; the frozen tensors stay θ0's exactly."""
    runs = cell.source_runs()
    states = [dict(r.model.state_dict()) for r in runs]
    trained = cell.trained_keys()
    inputs = MergeInputs(cell, runs, trained)
    rows = []
    for spec in cell.cfg.merges:
        start = time.perf_counter()
        state = merge_subset(spec.method, cell.theta0.state_dict(), states, trained, **spec.hparams,
                             **inputs.fed(spec))
        extra = {"merged": cell.sources, "merge_method": spec.method, "merge_hparams": spec.hparams,
                 **inputs.describe(spec, state)}
        if state.info.get("warning"):  # e.g. an LwPTV-style mask that pruned nothing
            extra["merge_warning"] = state.info["warning"]
        rows.append(cell.record(f"merge:{spec.name}", cell.loaded(state), start, extra, group="merge"))
    return rows


class MergeInputs:
    """What the merges needing data take, from one cell's source models, collected on first request."""

    def __init__(self, cell: Cell, runs: list[SourceRun], keys: list[str]):
        self.cell, self.runs, self.keys = cell, runs, keys
        self._cache: dict[tuple, Any] = {}

    def fed(self, spec: MergeSpec) -> dict[str, Any]:
        """The hyperparameters `spec`'s method needs besides the models (none for most methods)."""
        if spec.method == "regmean":
            return {"grams": self.grams(spec.batches)}
        if spec.method == "fisher":
            return {"fishers": self.fishers(spec.batches, spec.fisher_labels)}
        if spec.method == "greedy_soup":
            return {"evaluate": self.evaluate, "scores": self.source_scores()}
        if spec.method in MERGES_NEEDING_DATA:
            raise NotImplementedError(f"the merge experiment method does not feed {spec.method} yet")
        return {}

    def describe(self, spec: MergeSpec, merged: MergedState) -> dict[str, Any]:
        """Row fields saying where `spec`'s data came from (and the greedy soup's choice)."""
        batch = self.cell.cfg.train.batch_size
        if spec.method == "regmean":
            return {"merge_statistics": {"split": "train", "batches": spec.batches, "batch_size": batch,
                                         "regmean_keys": len(merged.info.get("regmean_keys", []))}}
        if spec.method == "fisher":
            return {"merge_statistics": {"split": "train", "batches": spec.batches, "batch_size": batch,
                                         "fisher_labels": spec.fisher_labels}}
        if spec.method == "greedy_soup":
            return {"soup_ingredients": [self.runs[i].source for i in merged.info["ingredients"]],
                    "soup_selection": "val", "soup_val_acc": merged.info["soup_score"],
                    "source_val_acc": dict(zip(self.cell.sources, merged.info["individual_scores"]))}
        return {}

    # --- statistics on each source's own training split -------------------------------------

    def grams(self, batches: int) -> list[StateDict]:
        """RegMean's Gram matrices per source model, keyed by the trained weights' state-dict keys."""
        def collect(run_: SourceRun) -> StateDict:
            # The classifier's forward runs from cached activations under a feature cache, so
            # the hooks see exactly what each trained layer saw in training (no prefix is trained).
            return collect_gram(run_.model, self.loader(run_.source), max_batches=batches,
                                device=module_device(run_.model), conv1x1=True, keys=set(self.keys))

        grams = self._per_source(("grams", batches), "RegMean's Gram statistics", collect)
        if not grams[0]:
            raise ValueError(f"regmean: no trained tensor of {self.cell.backbone.name} is a linear or 1×1-conv "
                             f"weight (train.trainable={self.cell.cfg.train.trainable!r}, train_head="
                             f"{self.cell.cfg.train.train_head}); RegMean would only average")
        return grams

    def fishers(self, batches: int, labels: str) -> list[StateDict]:
        """Diagonal Fishers of each source model's trained tensors on its training split."""
        return self._per_source(("fishers", batches, labels), "Fisher statistics",
                                lambda run_: fisher_of(run_.model, self.loader(run_.source), self.keys,
                                                       max_batches=batches, labels=labels))

    def _per_source(self, key: tuple, purpose: str, collect: Callable[[SourceRun], StateDict]) -> list[StateDict]:
        if key not in self._cache:
            self.cell.guard({r.source: self.cell.train_sets[r.source] for r in self.runs}, purpose)
            self._cache[key] = [collect(r) for r in self.runs]
        return self._cache[key]

    def loader(self, source: str) -> DataLoader:
        """`source`'s training split (train_in) in batches of train.batch_size, shuffled by the trial seed."""
        return DataLoader(self.cell.train_sets[source], batch_size=self.cell.cfg.train.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(self.cell.seed))

    # --- source validation, for greedy soup --------------------------------------------------

    def source_scores(self) -> list[float]:
        """Each source model's mean accuracy over the sources' validation splits."""
        if "scores" not in self._cache:
            if not self.cell.val_sets:
                raise ValueError("greedy_soup needs source validation splits; this cell has none")
            self.cell.guard(self.cell.val_sets, "greedy soup's selection")
            self._cache["scores"] = [self.val_accuracy(r.model) for r in self.runs]
        return self._cache["scores"]

    def evaluate(self, state: StateDict) -> float:
        """Source-validation accuracy of θ0 holding `state` (the merged trained tensors)."""
        return self.val_accuracy(self.cell.loaded({**self.cell.theta0.state_dict(), **state}))

    def val_accuracy(self, model: Classifier) -> float:
        """Mean accuracy over the sources' validation splits, as `cell.record` computes val_acc."""
        cell = self.cell
        batch, precision = cell.cfg.train.eval_batch_size, cell.cfg.train.precision
        return statistics.fmean(accuracy(model, data, batch, desc=f"val {d}", precision=precision)
                                for d, data in cell.val_sets.items())


def fisher_of(model: Classifier, loader: DataLoader, keys: list[str], **kwargs: Any) -> StateDict:
    """collect_fisher over exactly `keys` (gradients off elsewhere for the pass, then as they were)."""
    wanted = set(keys)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    for name, param in model.named_parameters():
        param.requires_grad_(name in wanted)
    try:
        return collect_fisher(model, loader, device=module_device(model), **kwargs)
    finally:
        for name, param in model.named_parameters():
            param.requires_grad_(flags[name])

