"""HAM: the source models trained in lockstep (SAE, OPA, historical averaging), then merged (RHM)."""

from __future__ import annotations

import statistics
import time
from typing import Any

from dgmerge.methods.cell import Cell, Row
from dgmerge.methods.registry import register_experiment


@register_experiment("ham", order=40, summary="HAM: lockstep source models with SAE + OPA + history, merged by RHM",
                     settings=("ham.sae", "ham.opa_weight", "ham.beta", "ham.merge_method", "ham.merge_hparams"))
def run(cell: Cell) -> list[Row]:
    """Train HAM under the config's `ham:` section and record its merged model."""
    start = time.perf_counter()
    result = cell.train_ham(cell.cfg.ham, "ham")
    extra = {"merged_from": result.merged_from, "train_wall_time_s": round(result.wall_time_s, 3),
             **training_summary(result.history)}
    return [cell.record("ham", cell.loaded(result.merged_state), start, extra,
                        hparams={"ham": cell.cfg.ham.model_dump(mode="json")})]


def training_summary(history: list[dict[str, Any]]) -> dict[str, float]:
    """A HAM training in two numbers for its rows: samples borrowed per step (all models, whole
    run) and the sign-conflict rate between the models' updates at the last step."""
    if not history or "borrowed" not in history[-1]:  # a run that logged no steps
        return {}
    return {"borrowed_per_step": round(statistics.fmean(r["borrowed"] for r in history), 2),
            "final_sign_conflict": round(history[-1]["sign_conflict"], 4)}
