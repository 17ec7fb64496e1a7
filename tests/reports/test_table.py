import csv
import io

import pytest

from dgmerge.reports.table import build_tables, to_csv, to_markdown


def r(method, domain, seed, acc, dataset="PACS"):
    return {"dataset": dataset, "method": method, "test_domain": domain, "seed": seed, "test_acc": acc}


def test_mean_std_over_seeds_and_avg_by_hand():
    rows = [r("erm", "a", 0, 0.80), r("erm", "a", 1, 0.90), r("erm", "b", 0, 0.60), r("erm", "b", 1, 0.70)]
    (table,) = build_tables(rows)
    cell = table.cells["erm"]["a"]
    assert cell.mean == pytest.approx(85.0) and cell.std == pytest.approx(5.0)
    # Per-seed averages: seed0 = 70, seed1 = 80 -> 75 ± 5.
    assert table.avg["erm"].mean == pytest.approx(75.0) and table.avg["erm"].std == pytest.approx(5.0)
    md = to_markdown(table)
    assert "| Method | a | b | Avg |" in md
    assert "| erm | 85.0 ± 5.0 | 65.0 ± 5.0 | 75.0 ± 5.0 |" in md


def test_avg_only_from_seeds_covering_every_domain():
    rows = [r("erm", "a", 0, 0.8), r("erm", "b", 0, 0.6), r("erm", "a", 1, 0.9),
            r("probe", "a", 0, 0.5)]
    (table,) = build_tables(rows)
    assert table.avg["erm"].values == [pytest.approx(70.0)]
    # Fewer seeds than the table's fullest cell (erm on a: 2) are counted, and one seed shows no
    # ± (it has no spread); erm's Avg, from its one complete seed, is marked too.
    md = to_markdown(table)
    assert "| probe | 50.0 (n=1) | — | — |" in md
    assert "| erm | 85.0 ± 5.0 | 60.0 (n=1) | 70.0 (n=1) |" in md


def test_rows_without_the_metric_are_left_out_not_shown_as_nan():
    rows = [r("erm", "a", 0, 0.8), {**r("mean", "a", 0, 0.7), "val_acc": float("nan")},
            {**r("erm", "a", 1, 0.6), "val_acc": 0.9}]
    (table,) = build_tables(rows, metric="val_acc")
    assert table.methods == ["erm"]
    assert table.cells["erm"]["a"].values == [pytest.approx(90.0)]
    assert "nan" not in to_markdown(table)


def test_rerun_replaces_not_doubles():
    (table,) = build_tables([r("erm", "a", 0, 0.5), r("erm", "a", 0, 0.7)])
    assert table.cells["erm"]["a"].values == [pytest.approx(70.0)]


def test_one_table_per_dataset_and_csv():
    tables = build_tables([r("erm", "a", 0, 0.5), r("erm", "x", 0, 0.25, dataset="VLCS")])
    assert [t.dataset for t in tables] == ["PACS", "VLCS"]
    parsed = list(csv.DictReader(io.StringIO(to_csv(tables))))
    assert {(p["dataset"], p["test_domain"], p["mean"]) for p in parsed} == {
        ("PACS", "a", "50.0000"), ("PACS", "Avg", "50.0000"), ("VLCS", "x", "25.0000"), ("VLCS", "Avg", "25.0000")}
