"""One model per source domain, each fine-tuned from θ0 on its own domain only."""

from __future__ import annotations

import statistics
import time

from dgmerge.evaluation.results import make_row
from dgmerge.methods.cell import Cell, Row
from dgmerge.methods.registry import register_experiment


@register_experiment("single_source", order=20, any_label_space=True,
                     summary="one model per source domain or task (rows source:<name> + their mean)",
                     settings=("train.steps", "train.lr", "train.batch_size"))
def run(cell: Cell) -> list[Row]:
    """Record each source's model (shared with the merges) and the mean of their test accuracies.

    In a multi-task cell each expert is scored on its own task's test set.
    """
    rows = []
    for run_ in cell.source_runs():
        start = time.perf_counter() - run_.wall_time_s  # the row's wall time includes its training
        extra = {"best_step": run_.result.best_step, "train_wall_time_s": round(run_.result.wall_time_s, 3),
                 "source_domain": run_.source}
        rows.append(cell.record(f"source:{run_.source}", run_.model, start, extra, group="single_source",
                                result=run_.result, task=None if cell.shared_head else run_.source))
    mean = make_row(**cell.row_ids("single_source_mean"), test_acc=statistics.fmean(r["test_acc"] for r in rows),
                    wall_time_s=0.0, val_acc=float("nan"), experiment_key=cell.job, method_group="single_source",
                    note="mean test accuracy of the single-source models")
    cell.append(mean)
    return [*rows, mean]
