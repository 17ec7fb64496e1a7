"""SWAD (Cha et al. 2021): the dense average of ERM's iterates inside the window of its loss-valley rule.

The segments ride on the cell's shared ERM run (an observer of its trajectory), so SWAD costs
a running mean per step and a source-validation loss every K steps beyond ERM, until the
valley is dead. The rule itself is training/swad.py's `LossValley`.
"""

from __future__ import annotations

import time

from dgmerge.methods.cell import Cell, Row
from dgmerge.methods.registry import register_experiment
from dgmerge.training.swad import SwadObserver


@register_experiment("swad", order=12,
                     summary="SWAD: ERM's iterates densely averaged over its source-validation loss valley "
                             "(Cha et al. 2021)",
                     settings=("swad.n_converge", "swad.n_tolerance", "swad.tolerance_ratio", "swad.eval_every",
                               "train.steps", "train.lr", "train.batch_size"))
def run(cell: Cell) -> list[Row]:
    """Record SWAD's window average of the shared ERM run, with the window the rule chose."""
    run_ = cell.erm_run()
    swad = run_.observers.get("swad")
    if not isinstance(swad, SwadObserver):
        raise RuntimeError("the cell's ERM run was trained without SWAD's segments: list swad in `methods:`")
    start = time.perf_counter() - run_.wall_time_s
    model = cell.loaded(swad.averaged(run_.result.final_state))
    extra = {"swad": {**swad.valley.summary(), "eval_every": swad.every},
             "train_wall_time_s": round(run_.result.wall_time_s, 3)}
    if swad.valley.fallback:
        extra["note"] = ("the validation loss never converged: averaged from its minimum-loss segment to the end "
                         "of the run")
    settings = {**cell.cfg.swad.model_dump(mode="json"), "eval_every": swad.every}
    return [cell.record("swad", model, start, extra, hparams={"swad": settings})]
