"""Every entry of `merges:` applied to the single-source models, over the trained tensors only."""

from __future__ import annotations

import time

from dgmerge.merging.scope import merge_subset
from dgmerge.methods.cell import Cell, Row
from dgmerge.methods.registry import register_experiment


@register_experiment("merge", order=30, summary="merge the single-source models with each entry of `merges:`",
                     settings=("merges",))
def run(cell: Cell) -> list[Row]:
    """One row merge:<name> per merge spec; the frozen tensors stay θ0's exactly."""
    states = [dict(r.model.state_dict()) for r in cell.source_runs()]
    trained = cell.trained_keys()
    rows = []
    for spec in cell.cfg.merges:
        start = time.perf_counter()
        state = merge_subset(spec.method, cell.theta0.state_dict(), states, trained, **spec.hparams)
        extra = {"merged": cell.sources, "merge_method": spec.method, "merge_hparams": spec.hparams}
        rows.append(cell.record(f"merge:{spec.name}", cell.loaded(state), start, extra, group="merge"))
    return rows
