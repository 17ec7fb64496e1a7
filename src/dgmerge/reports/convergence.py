"""Accuracy against training budget: the table and figure that say when more steps stop helping.

Source-validation accuracy is the selection metric; the held-out domain's accuracy is drawn
beside it as information only (dashed, labelled so) and never chooses the budget.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

from dgmerge.reports.markdown import markdown_table
from dgmerge.reports.figures import pyplot, save_figure

# Row method -> label, for the methods a convergence study trains.
LABELS = {"erm": "ERM", "single_source_mean": "Single-source models", "ham": "HAM"}


def budget_table(rows: Iterable[dict[str, Any]]) -> dict[str, dict[int, dict[str, float]]]:
    """{method: {steps: {"val": mean, "val_std": std, "test": mean, "cells": n}}} over (seed, domain) cells
    (and, for the single-source models, over the models of each cell)."""
    values: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        # The single-source models count one by one (source:<domain> rows, each with its own
        # source-validation accuracy); their mean row has no validation accuracy of its own.
        method = "single_source_mean" if row["method"].startswith("source:") else row["method"]
        if method in LABELS and row["method"] != "single_source_mean":
            steps = int(row["hparams"]["train"]["steps"])
            values[method][steps].append((100 * row["val_acc"], 100 * row["test_acc"]))
    table: dict[str, dict[int, dict[str, float]]] = {}
    for method, by_steps in values.items():
        table[method] = {}
        for steps, pairs in sorted(by_steps.items()):
            vals = [v for v, _ in pairs]
            table[method][steps] = {"val": statistics.fmean(vals),
                                    "val_std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                                    "test": statistics.fmean(t for _, t in pairs), "cells": len(pairs)}
    return table


def converged_budget(table: dict[str, dict[int, dict[str, float]]],
                     methods: Sequence[str] = ("erm", "single_source_mean", "ham"),
                     tolerance: float = 0.5) -> int | None:
    """The smallest budget at which every method's source-val accuracy is within `tolerance`
    points of that method's own best: beyond it, more steps help no method.

    Per method, not on a mean over methods: a flat method must not hide one that still improves.
    None without data, and None while any method's chosen budget is its largest run (nothing
    shows that more steps would not help it)."""
    present = [m for m in methods if m in table and table[m]]
    if not present:
        return None
    chosen = []
    for method in present:
        scores = {b: v["val"] for b, v in sorted(table[method].items())}
        best = max(scores.values())
        budget = next(b for b, val in scores.items() if val >= best - tolerance)
        if budget == max(scores):
            return None
        chosen.append(budget)
    return max(chosen)


def budget_markdown(table: dict[str, dict[int, dict[str, float]]]) -> str:
    """Rows = budgets; per method: source-val mean ± std, then held-out accuracy (information only)."""
    methods = [m for m in LABELS if m in table]
    budgets = sorted({b for m in methods for b in table[m]})
    head = ["steps"] + [f"{LABELS[m]} source val" for m in methods] + [f"{LABELS[m]} held-out (info only)" for m in methods]
    rows = []
    for b in budgets:
        cells = [str(b)]
        cells += [f"{table[m][b]['val']:.1f} ± {table[m][b]['val_std']:.1f}" if b in table[m] else "–" for m in methods]
        cells += [f"{table[m][b]['test']:.1f}" if b in table[m] else "–" for m in methods]
        rows.append(cells)
    return "\n".join(markdown_table(head, rows, "r" * len(head)))


def plot_budgets(table: dict[str, dict[int, dict[str, float]]], out: Path, title: str, force: bool = True) -> Path:
    """Source-val accuracy (solid) and held-out accuracy (dashed, information only) against steps."""
    plt = pyplot()
    figure, ax = plt.subplots(figsize=(6.4, 4.2))
    for index, method in enumerate(m for m in LABELS if m in table):
        steps = sorted(table[method])
        color = f"C{index}"
        ax.errorbar(steps, [table[method][s]["val"] for s in steps], yerr=[table[method][s]["val_std"] for s in steps],
                    color=color, marker="o", capsize=3, label=f"{LABELS[method]}: source validation")
        ax.plot(steps, [table[method][s]["test"] for s in steps], color=color, linestyle="--", marker="x",
                alpha=0.6, label=f"{LABELS[method]}: held-out (information only)")
    ax.set_xscale("log")
    ax.set_xlabel("training steps (cosine schedule to the budget)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(figure, out, force=force)


__all__ = ["LABELS", "budget_markdown", "budget_table", "converged_budget", "plot_budgets"]
