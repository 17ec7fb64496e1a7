"""`dgmerge bench pacs-cpu --convergence`: the training budget, chosen on source validation.

Each budget B trains ERM, the single-source models and HAM for B steps (the cosine schedule
runs to B) on every (seed, held-out domain) cell of the benchmark, in <out>/steps<B>/ with the
benchmark's own harness (resumable, one worker per core, one shared feature cache). The report
gives source-validation accuracy per budget (the selection metric) with held-out accuracy as
information only, the budget after which more steps no longer help, and a figure.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

from dgmerge.atomic import write_text_atomic
from dgmerge.pipeline.bench import BenchOptions, pacs_cpu_config, run_pacs_cpu
from dgmerge.pipeline.experiment import experiment_rows
from dgmerge.reports.convergence import budget_markdown, budget_table, converged_budget, plot_budgets

Log = Callable[[str], None]
BUDGETS = (100, 300, 1000, 2000, 4000)
METHODS = ["erm", "single_source", "ham"]


def budget_options(opts: BenchOptions, steps: int) -> BenchOptions:
    """The benchmark at `steps` steps: its own folder, the shared cache, no variants, ~20 evaluations and
    checkpoints per run (a long budget spans sessions; a checkpoint costs a few MB)."""
    # `--set methods=[erm,single_source]` narrows a run; methods stay out of the experiment key,
    # so adding HAM later to the same folders resumes them.
    # Every method, HAM included (ham.steps: None), trains for the budget under study.
    overrides = {"methods": METHODS, **opts.overrides, "ham_variants": [], "ham.steps": None,
                 "ham.eval_every": None,
                 "train.eval_every": max(50, steps // 20), "train.checkpoint_every": max(25, steps // 20)}
    if opts.quick:
        overrides.pop("train.eval_every")
        overrides.pop("train.checkpoint_every")
    return dataclasses.replace(opts, out=opts.out / f"steps{steps}", steps=steps, part="main",
                               cache_dir=opts.cache_dir or opts.out / "feature_cache", overrides=overrides)


def run_convergence(opts: BenchOptions, budgets: Sequence[int] = BUDGETS, log: Log = print) -> str:
    """Train every budget (resuming finished cells) and return the report markdown (also in <out>)."""
    for steps in sorted(budgets):
        log(f"convergence: {steps} steps -> {opts.out / f'steps{steps}'}")
        run_pacs_cpu(budget_options(opts, steps), log=log)
    return convergence_report(opts, budgets)


def budget_rows(opts: BenchOptions, budgets: Sequence[int]) -> list[dict]:
    """Every finished row of every budget's run of this exact setting."""
    rows = []
    for steps in budgets:
        rows += experiment_rows(pacs_cpu_config(budget_options(opts, steps)))
    return rows


def convergence_report(opts: BenchOptions, budgets: Sequence[int], figure: Path | None = None) -> str:
    """Markdown table, the converged budget and the figure (<out>/convergence.png, or `figure`)."""
    table = budget_table(budget_rows(opts, budgets))
    chosen = converged_budget(table)
    cells = sorted({v["cells"] for by in table.values() for v in by.values()})
    lines = [f"# Convergence on {opts.dataset} (`dgmerge bench pacs-cpu --convergence`)", "",
             f"Accuracy (%) per training budget, mean ± std over (seed, held-out domain) cells ({cells} per point). "
             "Source validation chooses; the held-out column is information only.", "",
             budget_markdown(table), ""]
    if chosen is not None:
        lines.append(f"Converged budget (the smallest at which every method is within 0.5 points of its own best "
                     f"source-validation accuracy): **{chosen} steps**.")
    elif table:
        lines.append("Not converged yet: some method's largest budget is still its best on source validation "
                     "(by more than 0.5 points over every smaller one); run a larger one.")
    if table:
        path = plot_budgets(table, figure or opts.out / "convergence.png", f"{opts.dataset}: accuracy against steps")
        lines.append(f"\nFigure: {path}")
    report = "\n".join(lines) + "\n"
    opts.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(opts.out / "convergence-report.md", report)
    return report


__all__ = ["BUDGETS", "METHODS", "budget_options", "convergence_report", "run_convergence"]
