"""The gating merge's multi-task tables (Ye et al. Tables 3-4 layout): one per task combination."""

from __future__ import annotations

import statistics
from typing import Any

from dgmerge.reports.markdown import markdown_table


def render_gating_multitask(rows: list[dict[str, Any]]) -> str:
    """One markdown table per combination: (method, head) rows, Params, FLOPs, each task, Avg."""
    mine = [r for r in rows if r.get("method_group") == "gating" and r.get("task") is not None]
    combos = list(dict.fromkeys(r["test_domain"] for r in mine))
    blocks = []
    for combo in combos:
        rows_c = [r for r in mine if r["test_domain"] == combo]
        tasks = list(rows_c[0]["split"]["sources"])
        body = []
        keys = list(dict.fromkeys((r.get("label", r["method"]), r.get("head", "manual")) for r in rows_c))
        for label, head in keys:
            cells = {r["task"]: r for r in rows_c if r.get("label", r["method"]) == label and r.get("head") == head}
            accs = [100 * cells[t]["test_acc"] for t in tasks if t in cells]
            first = next(iter(cells.values()))
            cost = ["–", "–"] if first.get("params") is None else [f"{first['params'] / 1e6:.2f}", f"{first['flops'] / 1e9:.3f}"]
            text = [f"{100 * cells[t]['test_acc']:.1f}" if t in cells else "–" for t in tasks]
            avg = f"{statistics.fmean(accs):.1f}" if len(accs) == len(tasks) else "–"
            body.append([label, head, *cost, *text, avg])
        header = ["Method", "Head", "Params (M)", "FLOPs (G)", *tasks, "Avg"]
        table = markdown_table(header, body, "ll" + "r" * (len(header) - 2))
        blocks.append("\n".join([f"**{len(tasks)} tasks: {', '.join(tasks)}**", "", *table]))
    return "\n\n".join(blocks) + "\n"
