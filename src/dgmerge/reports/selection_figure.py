"""The selection picture: each method's source-validation Avg (what chooses) against its held-out
Avg (what a DG user gets, information only), mean ± std over the seeds of the selection table.

A method above the trend of the others is one source validation under-rates; the chosen row
(highest source validation) is starred, and the target line (baseline + margin on held-out)
shows how far it is from the goal.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from dgmerge.reports.figures import Plotted, check_writable, pyplot, save_figure
from dgmerge.reports.selection import chosen_standing, mean_std, standings

Row = dict[str, Any]


def selection_figure(rows: list[Row], labels: dict[str, str], out: Path, baseline: str = "erm",
                     margin: float = 2.0, title: str | None = None, force: bool = False) -> Plotted:
    """Scatter with error bars of source-validation Avg (x) against held-out Avg (y) per method.

    `rows` are one row per (method, held-out domain, seed), as for `selection_markdown`; the seeds
    are those on which the baseline covers every held-out domain. Raises ValueError when no
    method is complete on them. `data` holds {label: (val mean, val std, test mean, test std)}
    and the chosen label.
    """
    seeds, ranked = standings(rows, labels, baseline)
    base = next((s for s in ranked if s.method == baseline), None)
    if base is None:
        raise ValueError(f"no seed on which {baseline!r} covers every held-out domain: nothing to plot")
    check_writable(out, force)
    chosen = chosen_standing(ranked, labels)
    points = {labels[s.method]: (*mean_std(s.val), *mean_std(s.test)) for s in ranked}
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    # Points are numbered in table order and named in a key beside the axes: the baselines
    # cluster within a fraction of a point, where names written next to points overprint.
    numbers: dict[tuple[float, float], list[str]] = {}
    key = []
    for number, s in enumerate(ranked, start=1):
        vx, vs, tx, ts = points[labels[s.method]]
        is_chosen = s is chosen
        ax.errorbar(vx, tx, xerr=vs, yerr=ts, fmt="*" if is_chosen else "o", markersize=12 if is_chosen else 5,
                    capsize=2, color="tab:red" if is_chosen else ("tab:green" if s.method == baseline else "tab:blue"))
        numbers.setdefault((round(vx, 2), round(tx, 2)), []).append(str(number))
        key.append(f"{number:>2}  {labels[s.method]}{'  (chosen)' if is_chosen else ''}")
    # Alternate numbers above and below their points in order of x, so neighbours do not overprint.
    for i, ((vx, tx), group) in enumerate(sorted(numbers.items())):
        ax.annotate("=".join(group), (vx, tx), textcoords="offset points", xytext=(3, 3 if i % 2 else -9),
                    fontsize=7)
    fig.text(0.99, 0.5, "\n".join(key), va="center", ha="left", fontsize=7, family="monospace")
    base_test = statistics.fmean(base.test)
    ax.axhline(base_test, color="tab:green", linestyle=":", linewidth=1, label=f"{labels[baseline]} held-out Avg")
    ax.axhline(base_test + margin, color="tab:red", linestyle="--", linewidth=1,
               label=f"target: {labels[baseline]} + {margin:g}")
    ax.set_xlabel("source-validation Avg (%): chooses")
    ax.set_ylabel("held-out Avg (%): information only")
    ax.set_title(title or f"Selection over seed(s) {', '.join(map(str, seeds))} (mean ± std over seeds)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return Plotted(save_figure(fig, out, force), fig, {"points": points, "chosen": labels[chosen.method]})
