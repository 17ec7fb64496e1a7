"""ERM + MA (Arpit et al. 2022): the uniform moving average of ERM's iterates from `ma.start_step` on.

The average rides on the cell's shared ERM run (an observer of its trajectory), so it costs
one running mean beyond ERM. Only the trained tensors are averaged; the rest are the run's.
"""

from __future__ import annotations

import time

from dgmerge.config import ExperimentConfig
from dgmerge.methods.cell import Cell, Row
from dgmerge.methods.registry import register_experiment
from dgmerge.training.observers import MovingAverage


def _check(cfg: ExperimentConfig) -> None:
    if cfg.ma.start_step > cfg.train.steps:
        raise ValueError(f"ma.start_step={cfg.ma.start_step} is past the last step (train.steps={cfg.train.steps}): "
                         "the moving average would hold no iterate")


@register_experiment("erm_ma", order=11, check=_check,
                     summary="ERM + the uniform moving average of its iterates from ma.start_step (Arpit et al. 2022)",
                     settings=("ma.start_step", "train.steps", "train.lr", "train.batch_size", "train.weight_decay"))
def run(cell: Cell) -> list[Row]:
    """Record the moving average of the shared ERM run's iterates, scored like any model."""
    run_ = cell.erm_run()
    ma = run_.observers.get("ma")
    if not isinstance(ma, MovingAverage):
        raise RuntimeError("the cell's ERM run was trained without the moving average: list erm_ma in `methods:`")
    start = time.perf_counter() - run_.wall_time_s
    extra = {"averaged_steps": [ma.first_step, ma.last_step], "averaged_iterates": ma.count,
             "train_wall_time_s": round(run_.result.wall_time_s, 3)}
    model = cell.loaded(ma.averaged(run_.result.final_state))
    return [cell.record("erm_ma", model, start, extra, hparams={"ma": cell.cfg.ma.model_dump(mode="json")})]
