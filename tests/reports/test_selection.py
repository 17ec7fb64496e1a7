"""The bench's method choice on source validation and its target check, on hand-made rows."""

from dgmerge.reports.selection import selection_markdown, standings
from selection_rows import LABELS, table


def test_the_row_is_chosen_on_source_validation_and_the_gain_is_paired_over_seeds():
    seeds, ranked = standings(table(), LABELS, "erm")
    assert seeds == [0, 1] and [s.method for s in ranked] == ["erm", "swad", "ham"]
    # ERM per-seed Avg: val (90+80)/2 = 85, (92+82)/2 = 87; test 65, 67.
    assert ranked[0].val == [85.0, 87.0] and ranked[0].test == [65.0, 67.0]
    text = selection_markdown(table(), LABELS)
    # SWAD has the best source val (86, 88): chosen although HAM is better held out. Its test Avg
    # is 68 and 69, so the paired gain over ERM is 3 and 2: mean 2.5, std 0.5.
    assert "| SWAD **(chosen)** | 87.0 ± 1.0 | 68.5 ± 0.5 | 2.5 ± 0.5 |" in text
    assert "**Chosen on source validation: SWAD**" in text and "+2.5. Target ERM + 2.0: **met**" in text
    # HAM: test Avg 73, 74 → gain 8, 7; shown as the best held-out row, information only.
    assert "Best held-out Avg (information only; it chooses nothing): HAM, 73.5 ± 0.5 (+7.5 over ERM)" in text
    assert "not compared: HAM soup" in text and "Single-source" not in text


def test_a_margin_the_chosen_row_misses_is_reported_as_not_met():
    assert "Target ERM + 3.0: **not met**" in selection_markdown(table(), LABELS, margin=3.0)


def test_only_seeds_where_the_baseline_covers_every_domain_count():
    # Seed 1 of ERM lacks domain b: only seed 0 is compared, and swad's seed 1 is ignored.
    partial = [r for r in table() if not (r["method"] == "erm" and r["seed"] == 1 and r["test_domain"] == "b")]
    seeds, ranked = standings(partial, LABELS, "erm")
    assert seeds == [0] and ranked[1].test == [68.0]
    assert selection_markdown([r for r in table() if r["method"] != "erm"], LABELS).startswith(
        "(no seed on which ERM covers every held-out domain yet)")
