"""Ablation tables of HAM variants (HAM Tables 2-5): rows relabelled by variant, then reports.table.

A sweep runs every variant as method "ham" with different `hparams.ham` switches; the label
says what differs from the default HamConfig ("ham w/o SAE", "ham historical=none", …), so
the variants become separate rows of an ordinary results table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from dgmerge.config import HamConfig
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


__all__ = ["ablation_markdown", "ablation_tables", "variant_label"]
