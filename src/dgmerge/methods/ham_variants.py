"""HAM's ablations and tuning points (`ham_variants:`), one row ham:<label> each.

Variants that change only the merge (method, hyperparameters, scope, or merging the best
checkpoints) reuse a training already done in the cell; the others train their own models.
`ham_variant_runs` picks all of them, only the reusing ones, or only the training ones; HAM's
tuning points (tuning: true) count as reusing ones, since HAM's own row is chosen among them.
"""

from __future__ import annotations

import time

from dgmerge.config import ExperimentConfig, HamVariant, can_reuse
from dgmerge.methods.cell import Cell, Row
from dgmerge.methods.ham import training_summary
from dgmerge.methods.registry import register_experiment
from dgmerge.training.ham import MERGED_FROM, merge_trained


def in_this_part(cfg: ExperimentConfig, variant: HamVariant) -> bool:
    """Whether `ham_variant_runs` runs `variant`: "reuse" the merge-time ones and HAM's tuning
    points (HAM's own row is chosen among them, training or not), "train" the others, "all" both."""
    if variant.tuning or can_reuse(cfg.variant_config(variant), cfg.ham):
        return cfg.ham_variant_runs in ("reuse", "all")
    return cfg.ham_variant_runs in ("train", "all")


def _done(cfg: ExperimentConfig, seed: int, finished: set[str]) -> bool:
    # Variants are done one by one (a config may add more after a run), and only those this part
    # runs count: the main part is done without the ablations part's trainings.
    return all(f"ham:{v.label}" in finished for v in cfg.ham_variants if v.applies_to(seed) and in_this_part(cfg, v))


@register_experiment("ham_variants", order=50, done=_done,
                     summary="HAM ablations/tuning points: `ham` with each variant's overrides (ham:<label>)",
                     settings=("ham_variants", "ham_variant_runs"))
def run(cell: Cell) -> list[Row]:
    """Record every variant of this cell's seed not yet in results.jsonl."""
    cfg = cell.cfg
    rows = []
    for variant in cfg.ham_variants:
        method = f"ham:{variant.label}"
        if method in cell.done or not variant.applies_to(cell.seed) or not in_this_part(cfg, variant):
            continue
        ham_cfg = cfg.variant_config(variant)
        reusable = can_reuse(ham_cfg, cfg.ham)
        start = time.perf_counter()
        base = cell.reusable_ham(ham_cfg)
        reused = base is not None
        if base is None:
            # Train what serves the most variants: HAM's own config when it covers this one.
            train_cfg, name = (cfg.ham, "ham") if reusable else (ham_cfg, f"ham_{variant.label}")
            base = cell.train_ham(train_cfg, name)
        merged = merge_trained(base, cell.theta0.state_dict(), ham_cfg)
        extra = {"variant": variant.model_dump(mode="json"), "merged_from": MERGED_FROM[ham_cfg.historical],
                 "train_wall_time_s": round(base.wall_time_s, 3), "reused_training": reused,
                 **training_summary(base.history)}
        if variant.tuning:
            extra["tuning_of"] = "ham"
        rows.append(cell.record(method, cell.loaded(merged), start, extra, group="ham_variants",
                                hparams={"ham": ham_cfg.model_dump(mode="json")}))
    return rows
