"""The compute table of the bench report: each training counted once, on hand-made rows."""

import pytest

from dgmerge.reports.compute import compute_markdown, compute_seconds, machines_markdown


def row(method, group, wall, train=None, seed=0, domain="a", **fields):
    out = {"method": method, "method_group": group, "wall_time_s": wall, "seed": seed, "test_domain": domain, **fields}
    if train is not None:
        out["train_wall_time_s"] = train
    return out


def test_shared_trainings_are_paid_once_by_the_row_that_ran_them():
    rows = [row("linear_probe", "linear_probe", 4.0),
            # ERM trains 100 s; MA and SWAD ride on it and add 2 and 3 s of their own.
            row("erm", "erm", 101.0, 100.0), row("erm_ma", "erm_ma", 102.0, 100.0), row("swad", "swad", 103.0, 100.0),
            # DiWA's runs: 500 s; greedy reuses them (its wall time is its own 10 s).
            row("diwa", "diwa", 505.0, 500.0), row("diwa:greedy", "diwa", 10.0, 500.0),
            # HAM's λ 0.1 training (3000 s), an r point reusing it, a λ 0.5 tuning point that trains,
            # a merge-time ablation reusing λ 0.1, and an ablation that trains.
            row("ham", "ham", 3004.0, 3000.0), row("ham:lam0.1_r0.4", "ham_variants", 4.0, 3000.0, tuning_of="ham"),
            row("ham:lam0.5_r0.2", "ham_variants", 2505.0, 2500.0, tuning_of="ham"),
            row("ham:ties", "ham_variants", 4.0, 3000.0),
            # Another cell, whose chosen λ is 0.5: its reference trains λ 0.1 for the ablations.
            row("ham:lam0.5_r0.2", "ham_variants", 2505.0, 2500.0, seed=2, tuning_of="ham"),
            row("ham:reference", "ham_variants", 3005.0, 3000.0, seed=2),
            row("ham:no-sae", "ham_variants", 1204.0, 1200.0),
            # The soup reuses the trainings: its train time is their sum, its wall time its own.
            row("ham_soup", "ham_soup", 5.0, 5500.0),
            # Another cell's ERM with the same training time is a different training.
            row("erm", "erm", 101.0, 100.0, seed=1)]
    seconds = compute_seconds(rows)
    assert seconds["linear_probe"] == pytest.approx(4.0)
    assert seconds["erm"] == pytest.approx(101.0 + 101.0)
    assert seconds["erm_ma"] == pytest.approx(2.0)
    assert seconds["swad"] == pytest.approx(3.0)
    assert seconds["diwa"] == pytest.approx(515.0)
    assert seconds["ham"] == pytest.approx(3004.0 + 4.0 + 2505.0 + 2505.0)
    assert seconds["ham_reference"] == pytest.approx(3005.0)
    assert seconds["ham_ablations"] == pytest.approx(4.0 + 1204.0)
    assert seconds["ham_soup"] == pytest.approx(5.0)
    assert sum(seconds.values()) == pytest.approx(4 + 202 + 2 + 3 + 515 + 8018 + 3005 + 1208 + 5)


def test_markdown_orders_by_cost_and_totals_in_hours():
    rows = [row("erm", "erm", 3600.0, 3600.0), row("ham", "ham", 3 * 3600.0, 3 * 3600.0)]
    lines = compute_markdown(rows).splitlines()
    assert lines[2].startswith("| HAM (") and lines[2].endswith("| 3.00 | 75.0 % |")
    assert lines[3].startswith("| ERM (") and lines[3].endswith("| 1.00 | 25.0 % |")
    assert lines[4] == "| **Total** | **4.00** | 100 % |"
    assert compute_markdown([]) == "(no rows with wall times yet)"


def test_machines_table_counts_rows_and_pays_a_shared_training_once_on_the_machine_that_ran_it():
    xeon = {"cpu": "Xeon", "cpus": 2, "threads": 1, "torch": "2"}
    epyc = {"cpu": "EPYC", "cpus": 2, "threads": 1, "torch": "2"}
    gpu = {"cpu": "EPYC", "cpus": 16, "threads": 16, "torch": "2", "gpu": "H100"}
    rows = [row("erm", "erm", 7200.0, 7200.0),  # written before rows named their machine
            row("ham", "ham", 3604.0, 3600.0, machine=xeon),
            # A merge-time ablation on another machine reuses the Xeon's training: 36 s of its own.
            row("ham:ties", "ham_variants", 36.0, 3600.0, machine=epyc),
            row("ham:no-sae", "ham_variants", 1800.0, 1764.0, machine=epyc),
            row("erm", "erm", 360.0, 360.0, seed=1, machine=gpu)]
    lines = compute_markdown(rows).splitlines()  # unchanged by the machines
    assert lines[-1] == "| **Total** | **3.61** | 100 % |"
    table = machines_markdown(rows).splitlines()
    assert table[0] == "| Machine | rows | worker-hours |"
    assert table[2] == "| EPYC, 2 CPUs, 1 thread(s) | 2 | 0.51 |"
    assert table[3].startswith("| not recorded (") and table[3].endswith("| 1 | 2.00 |")
    assert table[4] == "| Xeon, 2 CPUs, 1 thread(s) | 1 | 1.00 |"
    assert table[5] == "| EPYC, 16 CPUs, 16 thread(s), H100 | 1 | 0.10 |"
