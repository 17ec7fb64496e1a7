"""Accuracy against budget: the table, the converged budget rule and the figure, on hand-made rows."""

import pytest

from dgmerge.reports.convergence import budget_markdown, budget_table, converged_budget, plot_budgets


def row(method: str, steps: int, val: float, test: float, domain: str = "a") -> dict:
    return {"method": method, "val_acc": val, "test_acc": test, "test_domain": domain,
            "hparams": {"train": {"steps": steps}}}


ROWS = [
    row("erm", 100, 0.60, 0.50), row("erm", 100, 0.70, 0.40, "b"),
    row("erm", 300, 0.80, 0.55), row("erm", 300, 0.82, 0.45, "b"),
    row("erm", 1000, 0.84, 0.30), row("erm", 1000, 0.82, 0.20, "b"),
    row("source:p", 100, 0.40, 0.50), row("source:q", 100, 0.60, 0.50),
    row("source:p", 300, 0.70, 0.50), row("source:p", 1000, 0.71, 0.99),
    row("single_source_mean", 1000, float("nan"), 0.10),  # the mean row has no validation: left out
]


def test_the_table_averages_cells_per_budget():
    table = budget_table(ROWS)
    assert set(table) == {"erm", "single_source_mean"}
    assert table["erm"][100]["val"] == pytest.approx(65.0) and table["erm"][100]["cells"] == 2
    assert table["erm"][100]["val_std"] == pytest.approx(7.0711, abs=1e-3)
    assert table["erm"][1000]["test"] == pytest.approx(25.0)
    # Single-source: every source model of a cell is a point.
    assert table["single_source_mean"][100]["val"] == pytest.approx(50.0) and table["single_source_mean"][100]["cells"] == 2
    assert table["single_source_mean"][1000]["test"] == pytest.approx(99.0)


def test_the_budget_is_the_smallest_within_tolerance_of_each_methods_best_source_validation():
    table = budget_table(ROWS)
    # ERM source-val: 100 → 65.0, 300 → 81.0, 1000 → 83.0; single-source: 100 → 50.0, 300 → 70.0, 1000 → 71.0.
    assert converged_budget(table, tolerance=2.0) == 300
    # ERM still improves by more than 0.5 at the largest budget: nothing shows more steps would not help.
    assert converged_budget(table, tolerance=0.5) is None
    # Per method: a flat method does not hide one that still improves (a mean over methods would
    # say 300 here: ERM gains 2.0 from 300 to 1000, single-source loses 1.0, the mean gains 0.5).
    flat = [r for r in ROWS if not r["method"].startswith("source:")]
    flat += [row("source:p", b, 0.70, 0.5) for b in (100, 300)] + [row("source:p", 1000, 0.69, 0.5)]
    assert converged_budget(budget_table(flat), tolerance=1.0) is None
    assert converged_budget(budget_table(flat), methods=("single_source_mean",), tolerance=1.0) == 100
    # HAM counts when present: still improving at its largest budget → not converged.
    ham = ROWS + [row("ham", 100, 0.5, 0.5), row("ham", 300, 0.9, 0.5)]
    assert converged_budget(budget_table(ham), tolerance=2.0) is None
    ham += [row("ham", 1000, 0.905, 0.5)]
    assert converged_budget(budget_table(ham), tolerance=2.0) == 300
    # The held-out column never chooses: making 100 steps best on test changes nothing.
    assert converged_budget(budget_table(ROWS + [row("erm", 100, 0.60, 1.0, "c")]), tolerance=2.0) == 300


def test_markdown_and_figure(tmp_path):
    table = budget_table(ROWS)
    text = budget_markdown(table)
    assert "| 300 | 81.0 ± 1.4 | 70.0 ± 0.0 | 50.0 | 50.0 |" in text
    assert "held-out (info only)" in text.splitlines()[0]
    path = plot_budgets(table, tmp_path / "c.png", "t")
    assert path.stat().st_size > 1000
