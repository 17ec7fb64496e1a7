"""Paired ablation differences, checked against hand-computed numbers."""

from dgmerge.reports.ablations import paired_markdown


def r(method, domain, seed, test, val):
    return {"method": method, "test_domain": domain, "seed": seed, "test_acc": test, "val_acc": val}


def test_paired_reads_each_seed_against_the_same_seed():
    rows = [r("ref", "a", 0, 0.80, 0.90), r("ref", "b", 0, 0.60, 0.70),
            r("ref", "a", 1, 0.70, 0.80), r("ref", "b", 1, 0.50, 0.60),
            # two seeds on both domains: a: (-2 -4)/2 = -3 held-out, (+1 +1)/2 = +1 val
            r("x", "a", 0, 0.78, 0.91), r("x", "a", 1, 0.66, 0.81),
            r("x", "b", 0, 0.61, 0.70), r("x", "b", 1, 0.51, 0.62),
            # seed 1 only: read against the reference's seed 1 (0.70), not its mean (0.75)
            r("y", "a", 1, 0.75, 0.79)]
    md = paired_markdown(rows, "ref", {"x": "X", "y": "Y", "ref": "R"})
    lines = md.splitlines()
    assert lines[0] == "| Method | a | b | Avg |"
    # X's Avg: seed 0 (-2 + 1)/2 = -0.5, seed 1 (-4 + 1)/2 = -1.5 → -1.0; val (+1+0)/2, (+1+2)/2 → +1.0
    assert lines[2] == "| X | -3.0 / +1.0 | +1.0 / +1.0 | -1.0 / +1.0 |"
    assert lines[3] == "| Y | +5.0 / -1.0 (n=1) | — | — |"
    assert "| R |" not in md  # the reference is not paired with itself


def test_paired_without_pairs_and_negative_zero():
    assert paired_markdown([r("x", "a", 0, 0.5, 0.5)], "ref", {"x": "X"}).startswith("(no rows")
    rows = [r("ref", "a", 0, 0.5000, 0.5), r("x", "a", 0, 0.4996, 0.5)]
    assert "| X | +0.0 / +0.0 | +0.0 / +0.0 |" in paired_markdown(rows, "ref", {"x": "X"})
