"""ERM: θ0 fine-tuned on the pooled source domains, one batch per source per step (DomainBed)."""

from __future__ import annotations

import time

from dgmerge.methods.cell import Cell, Row
from dgmerge.methods.registry import register_experiment


@register_experiment("erm", order=10, summary="fine-tune θ0 on all sources pooled (a batch per source per step)",
                     settings=("train.steps", "train.lr", "train.batch_size", "train.weight_decay"))
def run(cell: Cell) -> list[Row]:
    """Record ERM's best-on-source-validation checkpoint (the run is shared with erm_ma and swad)."""
    run_ = cell.erm_run()
    start = time.perf_counter() - run_.wall_time_s  # the row's wall time includes its training
    extra = {"best_step": run_.result.best_step, "train_wall_time_s": round(run_.result.wall_time_s, 3)}
    return [cell.record("erm", run_.model, start, extra, result=run_.result)]
