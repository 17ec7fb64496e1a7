"""The gating merge's DG table in Ye et al.'s Table 6 layout: methods × (Params, FLOPs, domains, Avg)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from dgmerge.reports.markdown import markdown_table


def render_gating_dg(rows: list[dict[str, Any]], domains: Sequence[str]) -> str:
    """Markdown over the rows of the `gating` experiment method, mean over seeds (± std when several)."""
    order: list[str] = []
    cells: dict[tuple[str, str], list[float]] = {}
    cost: dict[str, tuple[float, float]] = {}
    for row in rows:
        if row.get("method_group") != "gating":
            continue
        label = row.get("label", row["method"])
        if label not in order:
            order.append(label)
        cells.setdefault((label, row["test_domain"]), []).append(100 * row["test_acc"])
        if row.get("params") is not None:
            cost[label] = (row["params"] / 1e6, row["flops"] / 1e9)
    present = [d for d in domains if any((m, d) in cells for m in order)]
    body = []
    for label in order:
        means = [statistics.fmean(cells[(label, d)]) if (label, d) in cells else float("nan") for d in present]
        params, flops = cost.get(label, (float("nan"), float("nan")))
        text = []
        for d in present:
            values = cells.get((label, d), [])
            cell = f"{statistics.fmean(values):.1f}" if values else "–"
            text.append(cell + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""))
        avg = f"{statistics.fmean(means):.1f}" if not any(math.isnan(m) for m in means) else "–"
        cost_text = ["–", "–"] if math.isnan(params) else [f"{params:.2f}", f"{flops:.3f}"]
        body.append([label, *cost_text, *text, avg])
    header = ["Method", "Params (M)", "FLOPs (G)", *present, "Avg"]
    return "\n".join(markdown_table(header, body, "l" + "r" * (len(header) - 1))) + "\n"
