"""The selection scatter: source-validation Avg against held-out Avg, on the selection test's rows."""

import pytest

from dgmerge.reports.selection_figure import selection_figure
from selection_rows import LABELS, table


def test_points_are_the_per_seed_avgs_and_the_chosen_row_is_starred(tmp_path):
    out = tmp_path / "selection.png"
    plotted = selection_figure(table(), LABELS, out)
    assert out.stat().st_size > 0
    points = plotted.data["points"]
    # ERM per-seed Avg: val 85, 87 → 86 ± 1; test 65, 67 → 66 ± 1 (population std).
    assert points["ERM"] == pytest.approx((86.0, 1.0, 66.0, 1.0))
    # HAM: val (85+75)/2 = 80, (86+76)/2 = 81; test 73, 74.
    assert points["HAM"] == pytest.approx((80.5, 0.5, 73.5, 0.5))
    assert set(points) == {"ERM", "SWAD", "HAM"}  # no summary row, no tuning-seed-only row
    assert plotted.data["chosen"] == "SWAD"
    ax = plotted.figure.axes[0]
    # The baseline's held-out line and the target line 2 points above it.
    assert sorted(line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() in (":", "--")) == [66.0, 68.0]
    with pytest.raises(FileExistsError):
        selection_figure(table(), LABELS, out)


def test_nothing_to_plot_without_a_complete_baseline(tmp_path):
    with pytest.raises(ValueError, match="'erm' covers every held-out domain"):
        selection_figure([r for r in table() if r["method"] != "erm"], LABELS, tmp_path / "x.png")
