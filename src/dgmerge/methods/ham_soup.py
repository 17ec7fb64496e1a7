"""HAM soup: the per-source models of every HAM training the cell's tuning points train (one per
λ in the shipped grid), merged together by HAM's own merge — diversity over hyperparameter
draws, in the spirit of DiWA, at no training cost beyond HAM's tuning.

Ours, not the paper's: the issue asked whether diversity helps HAM, to be measured. Only seeds
that train every tuning point (`ham_tuning_seeds`, all seeds when unset) get the row; the
others train only the λ their domain's tuning seeds chose, and a soup would cost them the rest.
"""

from __future__ import annotations

import time

from dgmerge.config import ExperimentConfig, HamConfig, training_key
from dgmerge.methods.cell import Cell, Row
from dgmerge.methods.registry import register_experiment
from dgmerge.training.ham import MERGED_FROM, merge_sources


def trainings(cfg: ExperimentConfig) -> list[tuple[str, HamConfig]]:
    """(run name, config) of each distinct training among `ham` and its tuning points, named as
    `ham` and `ham_variants` name them, so their checkpoints and kept trainings are shared."""
    out: list[tuple[str, HamConfig]] = [("ham", cfg.ham)]
    for variant in cfg.ham_variants:
        ham_cfg = cfg.variant_config(variant)
        if variant.tuning and all(training_key(ham_cfg) != training_key(c) for _, c in out):
            out.append((f"ham_{variant.label}", ham_cfg))
    return out


def _check(cfg: ExperimentConfig) -> None:
    if len(trainings(cfg)) < 2:
        raise ValueError("ham_soup merges the trainings of HAM's tuning points, and this config's `ham_variants` "
                         "has no tuning point (tuning: true) that trains its own models (e.g. another opa_weight)")


def _done(cfg: ExperimentConfig, seed: int, finished: set[str]) -> bool:
    return "ham_soup" in finished or (cfg.ham_tuning_seeds is not None and seed not in cfg.ham_tuning_seeds)


@register_experiment("ham_soup", order=55, done=_done, check=_check,
                     summary="ours: HAM's per-source models from every tuning point's training (each λ), "
                             "merged together by HAM's merge (row ham_soup; tuning seeds only)",
                     settings=("ham", "ham_variants", "ham_tuning_seeds"))
def run(cell: Cell) -> list[Row]:
    """Merge the N_S models of each distinct tuning training (reused, kept, or trained here)."""
    start = time.perf_counter()
    merge_cfg = cell.cfg.ham
    states, names, wall = [], [], 0.0
    members = trainings(cell.cfg)
    for name, ham_cfg in members:
        result = cell.train_ham(ham_cfg, name)  # reuses the cell's own training of it where there is one
        chosen = result.best_states if merge_cfg.historical == "none" else result.historical_states
        if chosen is None:
            raise ValueError(f"HAM's training {name} kept no historical averages to merge")
        states += [chosen[s] for s in result.sources]
        names.append(name)
        wall += result.wall_time_s
    merged = merge_sources(cell.theta0.state_dict(), states, result.trainable, merge_cfg)
    extra = {"soup_of": names, "members": len(states), "merged_from": MERGED_FROM[merge_cfg.historical],
             "train_wall_time_s": round(wall, 3)}
    return [cell.record("ham_soup", cell.loaded(merged), start, extra,
                        hparams={"ham": merge_cfg.model_dump(mode="json"),
                                 "opa_weights": [c.opa_weight for _, c in members]})]
