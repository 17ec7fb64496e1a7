"""DiWA (Ramé et al. 2022): the weight average of M ERM runs from the shared θ0, each with its own draw.

Run i trains ERM from θ0 with a seed and hyperparameters (lr = train.lr × lr_scale, weight
decay) drawn from `diwa.space`, both hashed from (cell seed, i, diwa.seed), and keeps its
checkpoint selected by source validation (DiWA's code averages each run's `model_best.pkl`).
Two rows: `diwa`, the uniform average of the M runs, and `diwa:greedy`, DiWA's "restricted"
selection — the greedy soup by source-validation accuracy. With checkpoints on
(train.checkpoint_every), each run resumes from its own checkpoint and a finished run is kept
until both rows are written, so a killed DiWA loses at most the part of the run it was in.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dgmerge.atomic import atomic_write
from dgmerge.config import ExperimentConfig, TrainConfig
from dgmerge.device import module_device, to_device
from dgmerge.hashing import config_hash
from dgmerge.merging.scope import merge_subset
from dgmerge.methods.cell import Cell, Row
from dgmerge.methods.registry import register_experiment
from dgmerge.models.accuracy import accuracy

StateDict = dict[str, torch.Tensor]


@dataclass
class DiwaRun:
    """One member of the average: its draw, its seed and its selected weights."""

    index: int
    draw: dict[str, Any]
    seed: int
    state: StateDict
    val_acc: float
    best_step: int
    wall_time_s: float

    def describe(self) -> dict[str, Any]:
        return {"run": self.index, **self.draw, "seed": self.seed, "val_acc": self.val_acc,
                "best_step": self.best_step}


def _hashed(*parts: Any) -> int:
    return int(config_hash(list(parts)), 16) % 2**31


def run_seed(cell_seed: int, index: int, diwa_seed: int) -> int:
    """Run `index`'s training seed, hashed from the cell's seed and diwa.seed (DomainBed's seed_hash)."""
    return _hashed("diwa run", cell_seed, index, diwa_seed)


def draw_hparams(space: dict[str, list[Any]], cell_seed: int, index: int, diwa_seed: int) -> dict[str, Any]:
    """Run `index`'s hyperparameters: one value per key of `space`, drawn uniformly, reproducibly."""
    rng = random.Random(_hashed("diwa hparams", cell_seed, index, diwa_seed))
    return {key: rng.choice(list(space[key])) for key in sorted(space)}


def run_config(train: TrainConfig, draw: dict[str, Any]) -> TrainConfig:
    """`train` with the draw applied: lr scaled by lr_scale, weight decay replaced (absent keys keep train's)."""
    return train.model_copy(update={"lr": train.lr * float(draw.get("lr_scale", 1.0)),
                                    "weight_decay": float(draw.get("weight_decay", train.weight_decay))})


def _done(cfg: ExperimentConfig, seed: int, finished: set[str]) -> bool:
    return {"diwa", "diwa:greedy"} <= finished


@register_experiment("diwa", order=13, done=_done,
                     summary="DiWA: the average of diwa.runs ERM runs with drawn lr, weight decay and seed "
                             "(Ramé et al. 2022; rows diwa, diwa:greedy)",
                     settings=("diwa.runs", "diwa.space", "diwa.seed", "train.steps", "train.lr", "train.batch_size"))
def run(cell: Cell) -> list[Row]:
    """Train (or reload) the M runs and record their uniform average and their greedy soup."""
    runs = [_train_or_load(cell, i) for i in range(cell.cfg.diwa.runs)]
    start = time.perf_counter() - sum(r.wall_time_s for r in runs)
    theta0 = cell.theta0.state_dict()
    states = [to_device(r.state, module_device(cell.theta0)) for r in runs]
    # Only what some run changed is averaged: frozen tensors stay θ0's bit for bit.
    keys = [k for k, v in theta0.items() if any(not torch.equal(s[k], v) for s in states)]
    hparams = {"diwa": {**cell.cfg.diwa.model_dump(mode="json"), "draws": [r.describe() for r in runs]}}
    extra = {"train_wall_time_s": round(sum(r.wall_time_s for r in runs), 3), "members": len(runs)}
    rows = []
    if "diwa" not in cell.done:
        uniform = merge_subset("average", theta0, states, keys)
        rows.append(cell.record("diwa", cell.loaded(uniform), start, extra, group="diwa", hparams=hparams))
    start = time.perf_counter()

    def source_val_acc(part: StateDict) -> float:
        model = cell.loaded({**theta0, **part})
        return statistics.fmean(accuracy(model, data, cell.cfg.train.eval_batch_size, desc=f"val {d}",
                                         precision=cell.cfg.train.precision) for d, data in cell.val_sets.items())

    soup = merge_subset("greedy_soup", theta0, states, keys, evaluate=source_val_acc,
                        scores=[r.val_acc for r in runs])
    greedy = {**extra, "ingredients": soup.info["ingredients"], "soup_val_acc": soup.info["soup_score"]}
    rows.append(cell.record("diwa:greedy", cell.loaded(soup), start, greedy, group="diwa", hparams=hparams))
    for i in range(len(runs)):
        path = _finished_path(cell, i)
        if path is not None:
            path.unlink(missing_ok=True)
    return rows


def _finished_path(cell: Cell, index: int) -> Path | None:
    """Where finished run `index` waits for the rows, beside the checkpoints (None when those are off)."""
    keeper = cell.checkpointer(f"diwa_{index}_finished")
    return keeper.path if keeper.enabled else None


def _train_or_load(cell: Cell, index: int) -> DiwaRun:
    """Run `index`, from its finished file when an earlier attempt got that far, else trained (resumably)."""
    cfg = cell.cfg
    draw = draw_hparams(cfg.diwa.space, cell.seed, index, cfg.diwa.seed)
    seed = run_seed(cell.seed, index, cfg.diwa.seed)
    path = _finished_path(cell, index)
    if path is not None and path.is_file():
        saved = torch.load(path, weights_only=True, map_location="cpu")
        if saved["draw"] == draw and saved["seed"] == seed:
            return DiwaRun(index, draw, seed, saved["state"], saved["val_acc"], saved["best_step"],
                           saved["wall_time_s"])
    start = time.perf_counter()
    _, result = cell.fine_tune(cell.train_sets, f"diwa {index}", train=run_config(cfg.train, draw), seed=seed)
    done = DiwaRun(index, draw, seed, result.best_state, result.best_val_acc, result.best_step,
                   time.perf_counter() - start)
    if path is not None:
        with atomic_write(path) as temp:
            torch.save({"draw": draw, "seed": seed, "state": done.state, "val_acc": done.val_acc,
                        "best_step": done.best_step, "wall_time_s": done.wall_time_s}, temp)
    return done
