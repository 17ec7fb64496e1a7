"""Why a row scores what it does: how far each model moved from θ0, and how HAM's training went.

Rows written since 2026-12-06 carry `update_norm` (‖θ − θ0‖₂ over the trained tensors) and HAM's
rows `borrowed_per_step` and `final_sign_conflict`; older rows lack them and are left out.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any, Callable

from dgmerge.reports.markdown import markdown_table

Row = dict[str, Any]


def _by_domain(rows: list[Row], field: str, select: Callable[[Row], bool]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        value = row.get(field)
        if select(row) and isinstance(value, (int, float)) and value == value:
            out[row["test_domain"]].append(float(value))
    return out


def diagnostics_markdown(rows: list[Row], labels: dict[str, str]) -> str:
    """Per held-out domain, the mean over seeds (and the mean of those, Avg): each labelled
    method's update norm (`single_source_mean`: over every source model), then HAM's samples
    borrowed per step and final sign-conflict rate. "(no rows with diagnostics yet)" if none."""
    domains = sorted({r["test_domain"] for r in rows})
    lines: list[list[str]] = []

    def add(name: str, values: dict[str, list[float]], fmt: str) -> None:
        means = {d: statistics.fmean(values[d]) for d in domains if values.get(d)}
        if means:
            cells = [format(means[d], fmt) if d in means else "–" for d in domains]
            lines.append([name, *cells, format(statistics.fmean(means.values()), fmt)])

    for method, label in labels.items():
        if method == "single_source_mean":
            select: Callable[[Row], bool] = lambda r: r["method"].startswith("source:")
        else:
            select = lambda r, m=method: r["method"] == m
        add(f"{label}: ‖θ − θ0‖", _by_domain(rows, "update_norm", select), ".2f")
    is_ham = lambda r: r["method"] == "ham"
    add("HAM: samples borrowed per step", _by_domain(rows, "borrowed_per_step", is_ham), ".1f")
    add("HAM: final sign-conflict rate", _by_domain(rows, "final_sign_conflict", is_ham), ".3f")
    if not lines:
        return "(no rows with diagnostics yet)"
    return "\n".join(markdown_table(["", *domains, "Avg"], lines, "l" + "r" * (len(domains) + 1)))
