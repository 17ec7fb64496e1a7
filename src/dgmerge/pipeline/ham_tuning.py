"""HAM's training tuning points chosen on a few seeds and reused on the rest (`ham_tuning_seeds`).

A tuning point that changes HAM's training (λ) costs a full HAM training per cell; one that
changes only the merge (r) costs a merge. With `ham_tuning_seeds: [0]`, seed 0 trains every
point; for each held-out domain, the point with the best source-validation accuracy there
(mean over the tuning seeds) names the training the other seeds run. They still choose among
that training's merge-time points by their own source validation. Nothing here reads a
held-out domain's accuracy: the choice is the same training-domain validation as everywhere.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from dgmerge.config import ExperimentConfig, HamConfig, can_reuse


def candidates(cfg: ExperimentConfig, seed: int) -> dict[str, HamConfig]:
    """HAM's row and its tuning points that run at `seed`: method name -> full HAM config.

    Tuning points run with HAM's row, not with the variants that train (`ham_variant_runs: train`).
    """
    out = {"ham": cfg.ham} if "ham" in cfg.methods else {}
    if "ham_variants" in cfg.methods and cfg.ham_variant_runs != "train":
        out.update({f"ham:{v.label}": cfg.variant_config(v) for v in cfg.ham_variants
                    if v.tuning and v.applies_to(seed)})
    return out


def chosen_training(cfg: ExperimentConfig, rows: list[dict[str, Any]], key: str, test_domain: str,
                    results_path: Path | str = "results.jsonl") -> tuple[str, HamConfig]:
    """(winning point, its HAM config) on the tuning seeds for `test_domain`.

    The winner has the highest mean source-validation accuracy over the tuning seeds; a tie
    goes to the point listed first (`ham`, then `ham_variants` in order). Raises ValueError
    naming the missing rows if a tuning seed has not finished every point.
    """
    seeds = cfg.ham_tuning_seeds or []
    points = candidates(cfg, seeds[0]) if seeds else {}
    val: dict[tuple[int, str], float] = {}
    for row in rows:
        if row.get("experiment_key") == key and row.get("test_domain") == test_domain and row.get("seed") in seeds:
            val[(row["seed"], row["method"])] = float(row["val_acc"])
    missing = [f"seed {s}: {name}" for s in seeds for name in candidates(cfg, s) if (s, name) not in val]
    if missing or not points:
        raise ValueError(
            f"ham_tuning_seeds {seeds}: HAM's tuning points for held-out domain {test_domain} are not all in "
            f"{results_path} ({'missing ' + ', '.join(missing) if missing else 'none are configured'}); "
            "run those seeds first (listed in `seeds`, they run before the others), or set "
            "ham_tuning_seeds: null to tune on every seed")
    names = list(points)
    mean = {name: statistics.fmean(val[(s, name)] for s in seeds) for name in names}
    best = max(names, key=lambda name: (mean[name], -names.index(name)))
    return best, points[best]


def skipped_points(cfg: ExperimentConfig, rows: list[dict[str, Any]], key: str, seed: int, test_domain: str,
                   results_path: Path | str = "results.jsonl") -> tuple[str | None, set[str]]:
    """(the tuning seeds' winning point, HAM's points this cell skips: those its seed cannot merge
    from the winner's training). (None, empty) unless `ham_tuning_seeds` is set, `seed` is not
    one of them and HAM runs here."""
    if cfg.ham_tuning_seeds is None or seed in cfg.ham_tuning_seeds or not candidates(cfg, seed):
        return None, set()
    winner, chosen = chosen_training(cfg, rows, key, test_domain, results_path)
    return winner, {name for name, ham in candidates(cfg, seed).items() if not can_reuse(ham, chosen)}


def tuning_first(cfg: ExperimentConfig, seeds: list[int]) -> list[int]:
    """`seeds` with the tuning seeds first (the others need their choice), each group in order."""
    tuning = set(cfg.ham_tuning_seeds or [])
    return sorted(seeds, key=lambda s: (s not in tuning, seeds.index(s)))
