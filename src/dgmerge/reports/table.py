"""Results tables: rows = methods, columns = test domains + Avg, cells mean ± std over seeds."""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

from dgmerge.reports.markdown import markdown_table


@dataclass
class Cell:
    """Accuracies (in %) of one method on one test domain, one per seed."""

    values: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        # Population std over seeds, as DomainBed reports; 0 for a single seed.
        return statistics.pstdev(self.values) if len(self.values) > 1 else 0.0

    def format(self, digits: int = 1) -> str:
        if not self.values:
            return "—"
        if len(self.values) == 1:
            # One seed has no spread to show; "± 0.0" would claim one.
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


@dataclass
class Table:
    """One dataset's table; `cells[method][domain]`, `avg[method]` over seeds of per-seed means;
    `seed_avgs[method][seed]`: those per-seed means (the seeds covering every domain), for
    comparisons paired over seeds."""

    dataset: str
    domains: list[str]
    methods: list[str]
    cells: dict[str, dict[str, Cell]]
    avg: dict[str, Cell]
    seed_avgs: dict[str, dict[Any, float]] = field(default_factory=dict)


def build_tables(rows: Iterable[dict[str, Any]], metric: str = "test_acc") -> list[Table]:
    """Group result rows into one table per dataset.

    A repeated (method, domain, seed) keeps its latest row, so a rerun replaces, not doubles.
    Avg for a seed is the mean over test domains, and only for seeds that cover every domain
    of the table; the cell then shows mean ± std of those per-seed averages. A row without a
    value for `metric` (absent, None or NaN: the single-source mean has no one source validation)
    is not a measurement of it and is left out, rather than shown as "nan".
    """
    latest: dict[tuple[str, str, str, Any], float] = {}
    method_order: dict[str, list[str]] = defaultdict(list)
    domain_order: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        dataset, method, domain = row["dataset"], row["method"], row["test_domain"]
        value = row.get(metric)
        if value is None or math.isnan(float(value)):
            continue
        latest[(dataset, method, domain, row["seed"])] = 100.0 * float(value)
        if method not in method_order[dataset]:
            method_order[dataset].append(method)
        if domain not in domain_order[dataset]:
            domain_order[dataset].append(domain)

    tables = []
    for dataset in method_order:
        domains = sorted(domain_order[dataset])
        methods = method_order[dataset]
        cells: dict[str, dict[str, Cell]] = {m: {d: Cell() for d in domains} for m in methods}
        per_seed: dict[str, dict[Any, dict[str, float]]] = {m: defaultdict(dict) for m in methods}
        for (ds, method, domain, seed), value in sorted(latest.items(), key=lambda kv: str(kv[0])):
            if ds != dataset:
                continue
            cells[method][domain].values.append(value)
            per_seed[method][seed][domain] = value
        seed_avgs = {m: {seed: statistics.fmean(v.values()) for seed, v in per_seed[m].items()
                         if len(v) == len(domains)} for m in methods}
        avg = {m: Cell(list(seed_avgs[m].values())) for m in methods}
        tables.append(Table(dataset, domains, methods, cells, avg, seed_avgs))
    return tables


def to_markdown(table: Table, digits: int = 1) -> str:
    """The table in markdown, with the dataset name as a heading.

    A cell over fewer seeds than the table's fullest cell says how many ("(n=1)"): its ± is not
    comparable to the others'. A one-seed cell, such as a tuning-seed-only ablation's, shows no ±.
    """
    header = ["Method", *table.domains, "Avg"]
    columns = [[table.cells[m][d] for d in table.domains] + [table.avg[m]] for m in table.methods]
    most = max((len(cell.values) for row in columns for cell in row), default=0)

    def shown(cell: Cell) -> str:
        few = cell.values and len(cell.values) < most
        return cell.format(digits) + (f" (n={len(cell.values)})" if few else "")

    body = [[method, *map(shown, row)] for method, row in zip(table.methods, columns)]
    lines = [f"### {table.dataset}", "", *markdown_table(header, body, "l" + "c" * (len(header) - 1))]
    return "\n".join(lines) + "\n"


def to_csv(tables: list[Table]) -> str:
    """All tables in one long-format CSV: dataset, method, domain, mean, std, n_seeds."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["dataset", "method", "test_domain", "mean", "std", "n_seeds"])
    for table in tables:
        for method in table.methods:
            columns = [(d, table.cells[method][d]) for d in table.domains] + [("Avg", table.avg[method])]
            for domain, cell in columns:
                if cell.values:
                    writer.writerow([table.dataset, method, domain, f"{cell.mean:.4f}",
                                     f"{cell.std:.4f}", len(cell.values)])
    return buffer.getvalue()
