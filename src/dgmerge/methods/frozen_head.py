"""θ0 with its frozen head: the row every fine-tuned method starts from.

With a CLIP text head this is zero-shot CLIP ("zero_shot"); with a linear probe fitted on
the pooled sources it is the linear probe ("linear_probe"). Either name in `methods:` runs
it; the row is named after the head the cell actually has.
"""

from __future__ import annotations

import time

from dgmerge.config import ExperimentConfig
from dgmerge.methods.cell import Cell, Row
from dgmerge.methods.registry import register_experiment

NAMES = ("linear_probe", "zero_shot")


def _done(cfg: ExperimentConfig, seed: int, finished: set[str]) -> bool:
    return bool(finished & set(NAMES))


@register_experiment("linear_probe", aliases=("zero_shot",), order=0, done=_done,
                     summary="θ0 under its frozen head: the linear probe, or zero-shot CLIP with a text head",
                     settings=("probe.epochs", "probe.lr", "probe.weight_decay", "backbone.templates"))
def run(cell: Cell) -> list[Row]:
    """Score θ0 with the frozen head; its saved file is the --pretrained of a later `dgmerge merge`."""
    start = time.perf_counter()
    return [cell.record(cell.head_row_name(), cell.theta0, start, {"head": type(cell.theta0.head).__name__})]
