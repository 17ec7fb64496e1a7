"""ERM: θ0 fine-tuned on the pooled source domains, one batch per source per step (DomainBed)."""

from __future__ import annotations

import time

from dgmerge.methods.cell import Cell, Row
from dgmerge.methods.registry import register_experiment


@register_experiment("erm", order=10, summary="fine-tune θ0 on all sources pooled (a batch per source per step)",
                     settings=("train.steps", "train.lr", "train.batch_size", "train.weight_decay"))
def run(cell: Cell) -> list[Row]:
    """Train ERM and record its best-on-source-validation checkpoint."""
    start = time.perf_counter()
    model, result = cell.fine_tune(cell.train_sets, "erm")
    extra = {"best_step": result.best_step, "train_wall_time_s": round(result.wall_time_s, 3)}
    return [cell.record("erm", model, start, extra, result=result)]
