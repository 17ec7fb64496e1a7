"""Splitting an experiment's cells over worker processes."""

import pytest

from dgmerge.pipeline.parallel import format_cells, parse_cells, plan_workers

SIZES = {"art_painting": 2048, "cartoon": 2344, "photo": 1670, "sketch": 3929}


def test_plan_balances_cost_and_keeps_every_cell_once():
    cells = [(s, d) for s in (0, 1, 2) for d in SIZES]
    groups = plan_workers(cells, lambda c: SIZES[c[1]], 2)
    assert sorted(c for g in groups for c in g) == sorted(cells)
    loads = [sum(SIZES[d] for _, d in g) for g in groups]
    # Greedy longest-first on these sizes: 3×3929, 3×2344, ... → loads within one cell of each other.
    assert abs(loads[0] - loads[1]) <= max(SIZES.values())
    # By hand: 4 cells of cost 4, 3, 2, 1 over 2 workers → {4, 1} and {3, 2}.
    by_hand = plan_workers([(0, "a"), (0, "b"), (0, "c"), (0, "d")], lambda c: {"a": 4, "b": 3, "c": 2, "d": 1}[c[1]], 2)
    assert by_hand == [[(0, "a"), (0, "d")], [(0, "b"), (0, "c")]]
    assert plan_workers([(0, "a")], lambda c: 1.0, 4) == [[(0, "a")]]
    with pytest.raises(ValueError):
        plan_workers([(0, "a")], lambda c: 1.0, 0)


def test_cells_round_trip_and_errors():
    cells = [(0, "photo"), (2, "sketch")]
    assert parse_cells(format_cells(cells)) == set(cells)
    for bad in ("photo", "x:photo", "1:"):
        with pytest.raises(ValueError, match="--cells"):
            parse_cells(bad)


def test_cells_kept_together_share_one_worker():
    cells = [(s, d) for s in (0, 1, 2) for d in SIZES]
    groups = plan_workers(cells, lambda c: SIZES[c[1]], 2, together=lambda c: c[1])
    # Each domain's three seeds in one group; by hand: units 3×3929, 3×2344, 3×2048, 3×1670 →
    # {sketch, photo} (17,697) and {cartoon, art_painting} (13,176).
    assert [sorted({d for _, d in g}) for g in groups] == [["photo", "sketch"], ["art_painting", "cartoon"]]
    assert sorted(c for g in groups for c in g) == sorted(cells)
