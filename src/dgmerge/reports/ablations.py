"""Ablation tables of HAM variants (HAM Tables 2-5): rows relabelled by variant, then reports.table.

A sweep runs every variant as method "ham" with different `hparams.ham` switches; the label
says what differs from the default HamConfig ("ham w/o SAE", "ham historical=none", …), so
the variants become separate rows of an ordinary results table.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dgmerge.config import HamConfig
from dgmerge.reports.markdown import markdown_table
from dgmerge.reports.table import Table, build_tables, to_markdown

# Module switches get the paper's "w/o X" wording; other settings are shown as key=value.
_SWITCH_NAMES = {"sae": "SAE", "opa": "OPA"}


def _ham_defaults() -> dict[str, Any]:
    return HamConfig().model_dump(mode="json")


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def variant_label(row: dict[str, Any], defaults: dict[str, Any] | None = None) -> str:
    """The row's ablation label: an explicit row["label"], else method + what differs from HamConfig().

    Non-HAM rows keep their method name.
    """
    if row.get("label"):
        return str(row["label"])
    method = str(row["method"])
    ham = (row.get("hparams") or {}).get("ham")
    if method != "ham" or not isinstance(ham, dict):
        return method
    base = _flat(defaults if defaults is not None else _ham_defaults())
    parts = []
    for key, value in sorted(_flat(ham).items()):
        if key in base and base[key] == value:
            continue
        if key in _SWITCH_NAMES and value is False:
            parts.append(f"w/o {_SWITCH_NAMES[key]}")
        else:
            parts.append(f"{key.removeprefix('merge_hparams.')}={value}")
    return " ".join([method, *parts])


def ablation_tables(rows: Iterable[dict[str, Any]], methods: Sequence[str] = ("ham",),
                    metric: str = "test_acc") -> list[Table]:
    """One table per dataset; rows = variant labels of the rows whose method is in `methods`.

    Cells are mean ± std over seeds as in reports.table (which does the grouping).
    """
    defaults = _ham_defaults()
    relabelled = [{**row, "method": variant_label(row, defaults)} for row in rows if row.get("method") in methods]
    return build_tables(relabelled, metric=metric)


def ablation_markdown(rows: Iterable[dict[str, Any]], methods: Sequence[str] = ("ham",),
                      metric: str = "test_acc") -> str:
    """The ablation tables as markdown ("" when no row matches)."""
    return "\n".join(to_markdown(t) for t in ablation_tables(rows, methods, metric))


def _signed(value: float) -> str:
    # round first so that -0.04 prints as +0.0, not -0.0
    return f"{round(value, 1) + 0.0:+.1f}"


def paired_markdown(rows: Iterable[dict[str, Any]], reference: str, labels: Mapping[str, str]) -> str:
    """Each method of `labels` minus `reference`, paired on the (seed, held-out domain) cells both have.

    A cell reads "Δ held-out / Δ source val" in points, the mean over the seeds both rows have
    there, marked "(n=k)" when k is below the table's fullest cell. Why paired: an ablation run
    on seed 0 only must be read against the reference's seed 0, not its 3-seed mean, whose seed
    spread can exceed the ablation's effect. Avg: per seed, the mean difference over the domains,
    over the seeds where both rows have every domain. The latest row per (method, seed, domain)
    counts, as in the tables.
    """
    acc: dict[tuple[str, Any, str], tuple[float, float]] = {}
    for row in rows:
        if row.get("method") in labels or row.get("method") == reference:
            acc[(row["method"], row["seed"], row["test_domain"])] = (100.0 * float(row["test_acc"]),
                                                                     100.0 * float(row["val_acc"]))
    domains = sorted({domain for (_, _, domain) in acc})
    ref = {(seed, domain): value for (method, seed, domain), value in acc.items() if method == reference}
    body: list[tuple[str, list[tuple[list[float], list[float]]]]] = []
    for method, label in labels.items():
        if method == reference:
            continue
        # (seed, domain) -> (Δ held-out, Δ source val), on the cells the reference has too
        diff = {(s, d): (value[0] - ref[(s, d)][0], value[1] - ref[(s, d)][1])
                for (m, s, d), value in acc.items() if m == method and (s, d) in ref}
        cells = [([t for (_, d), (t, _) in diff.items() if d == domain],
                  [v for (_, d), (_, v) in diff.items() if d == domain]) for domain in domains]
        full = sorted({s for s, _ in diff if all((s, d) in diff for d in domains)}, key=str)
        cells.append(([statistics.fmean(diff[(s, d)][0] for d in domains) for s in full],
                      [statistics.fmean(diff[(s, d)][1] for d in domains) for s in full]))
        if diff:
            body.append((label, cells))
    if not body:
        return "(no rows pair with the reference yet)"
    most = max(len(test) for _, cells in body for test, _ in cells)

    def shown(test: list[float], val: list[float]) -> str:
        if not test:
            return "—"
        few = f" (n={len(test)})" if len(test) < most else ""
        return f"{_signed(statistics.fmean(test))} / {_signed(statistics.fmean(val))}{few}"

    header = ["Method", *domains, "Avg"]
    rows = [[label, *(shown(t, v) for t, v in cells)] for label, cells in body]
    return "\n".join(markdown_table(header, rows, "l" + "c" * (len(header) - 1))) + "\n"


__all__ = ["ablation_markdown", "ablation_tables", "paired_markdown", "variant_label"]
