"""Which row source validation would pick, and whether it clears a target over a baseline.

The bench's target reads "the best source-validation-selected row at least ERM + 2.0 Avg over 3
seeds". Picking that row by its held-out accuracy would be choosing on the test domain, so the
row is the one with the highest source-validation Avg; the best held-out row is shown beside it,
labelled as information that chooses nothing. Every number is over the seeds on which the
baseline covers every held-out domain, and a method is a candidate only if it covers them too
(a tuning-seed-only row cannot win against a 3-seed table).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Iterable

from dgmerge.reports.markdown import markdown_table
from dgmerge.reports.table import Cell, build_tables

Row = dict[str, Any]

# Rows that summarise several models rather than being one model a user could deploy.
NOT_A_MODEL = frozenset({"single_source_mean"})


@dataclass(frozen=True)
class Standing:
    """One method over the common seeds: per-seed Avg (%) of source validation and held-out."""

    method: str
    val: list[float]
    test: list[float]

    @property
    def val_mean(self) -> float:
        return statistics.fmean(self.val)


def _per_seed_avgs(rows: Iterable[Row], metric: str) -> dict[str, dict[Any, float]]:
    """method -> seed -> mean over held-out domains, only for seeds that cover every domain
    (the tables' own per-seed Avg, over the rows that have `metric`)."""
    rows = list(rows)
    domains = {row["test_domain"] for row in rows}
    scored = [r for r in rows if isinstance(r.get(metric), (int, float)) and r[metric] == r[metric]]
    out: dict[str, dict[Any, float]] = {}
    for table in build_tables(scored, metric):
        if set(table.domains) == domains:  # a domain no row scored leaves no seed complete
            out.update(table.seed_avgs)
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population std (as the tables) of per-seed values; std 0 for one seed."""
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def _spread(values: list[float]) -> str:
    # The tables' own cell format, so "mean ± std" (and one seed without ±) reads the same here.
    return Cell(values).format(1)


def chosen_standing(ranked: list[Standing], labels: dict[str, str]) -> Standing:
    """The row source validation picks: the highest source-validation Avg, ties to the earlier label."""
    order = list(labels)
    return max(ranked, key=lambda s: (s.val_mean, -order.index(s.method)))


def standings(rows: list[Row], methods: Iterable[str], baseline: str) -> tuple[list[Any], list[Standing]]:
    """The baseline's complete seeds, and every method (baseline included) complete on all of them."""
    val, test = _per_seed_avgs(rows, "val_acc"), _per_seed_avgs(rows, "test_acc")
    seeds = sorted(set(val.get(baseline, {})) & set(test.get(baseline, {})), key=str)
    out = []
    for method in methods:
        if method in NOT_A_MODEL or not seeds:
            continue
        if all(s in val.get(method, {}) and s in test.get(method, {}) for s in seeds):
            out.append(Standing(method, [val[method][s] for s in seeds], [test[method][s] for s in seeds]))
    return seeds, out


def selection_markdown(rows: list[Row], labels: dict[str, str], baseline: str = "erm",
                       margin: float = 2.0) -> str:
    """The row source validation picks among `labels`, its held-out Avg against the baseline's
    (difference paired over seeds) and the target verdict; then the best held-out row, labelled
    information only. `rows` are one row per (method, held-out domain, seed), e.g. after
    `select_by_validation`."""
    seeds, ranked = standings(rows, labels, baseline)
    base = next((s for s in ranked if s.method == baseline), None)
    if base is None:
        return f"(no seed on which {labels.get(baseline, baseline)} covers every held-out domain yet)"
    order = list(labels)
    chosen = chosen_standing(ranked, labels)
    by_test = max(ranked, key=lambda s: (statistics.fmean(s.test), -order.index(s.method)))

    def gain(s: Standing) -> list[float]:
        return [t - b for t, b in zip(s.test, base.test)]

    met = statistics.fmean(gain(chosen)) >= margin
    name = labels[baseline]
    lines = [
        f"Over seed(s) {', '.join(map(str, seeds))} (every held-out domain; Avg = mean over held-out domains, "
        "then mean ± std over seeds):", "",
        *markdown_table(
            ["Method", "source validation Avg", "held-out Avg", f"held-out − {name} (paired)"],
            [[labels[s.method] + (" **(chosen)**" if s is chosen else ""), _spread(s.val), _spread(s.test),
              _spread(gain(s))] for s in ranked], "lccc"),
        "",
        f"- **Chosen on source validation: {labels[chosen.method]}** (source val {_spread(chosen.val)}); "
        f"held-out Avg {_spread(chosen.test)} against {name} {_spread(base.test)}: "
        f"{statistics.fmean(gain(chosen)):+.1f}. Target {name} + {margin:.1f}: "
        f"**{'met' if met else 'not met'}**.",
        f"- Best held-out Avg (information only; it chooses nothing): {labels[by_test.method]}, "
        f"{_spread(by_test.test)} ({statistics.fmean(gain(by_test)):+.1f} over {name}).",
        "- A row that chose on this same split (a checkpoint, a window, ingredients, λ and r) reads it "
        "optimistically; source validation is the only split the protocol allows for the choice.",
    ]
    left_out = [labels[m] for m in labels if m not in NOT_A_MODEL and m not in {s.method for s in ranked}]
    if left_out:
        lines.append(f"- Not on every one of these seeds and domains, so not compared: {', '.join(left_out)}.")
    return "\n".join(lines)
