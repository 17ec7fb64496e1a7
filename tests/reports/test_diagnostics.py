"""The diagnostics table of the bench report, on hand-made rows."""

from dgmerge.reports.diagnostics import diagnostics_markdown


def row(method, domain, seed, **fields):
    return {"method": method, "test_domain": domain, "seed": seed, **fields}


def test_update_norms_and_hams_training_numbers_are_averaged_per_domain_by_hand():
    rows = [row("erm", "a", 0, update_norm=2.0), row("erm", "a", 1, update_norm=4.0), row("erm", "b", 0, update_norm=1.0),
            row("source:x", "a", 0, update_norm=1.0), row("source:y", "a", 0, update_norm=2.0),
            row("ham", "a", 0, update_norm=0.5, borrowed_per_step=70.0, final_sign_conflict=0.05),
            row("ham", "b", 0, update_norm=0.7, borrowed_per_step=80.0, final_sign_conflict=0.07),
            row("merge:ties", "a", 0),  # an older row without the fields: left out
            row("erm", "b", 1, update_norm=float("nan"))]
    text = diagnostics_markdown(rows, {"erm": "ERM", "single_source_mean": "Single-source", "merge:ties": "TIES",
                                       "ham": "HAM"})
    lines = text.splitlines()
    assert lines[0] == "| | a | b | Avg |"
    # ERM: a = mean(2, 4) = 3, b = 1 (the NaN row skipped), Avg = 2.
    assert "| ERM: ‖θ − θ0‖ | 3.00 | 1.00 | 2.00 |" in lines
    assert "| Single-source: ‖θ − θ0‖ | 1.50 | – | 1.50 |" in lines
    assert "| HAM: ‖θ − θ0‖ | 0.50 | 0.70 | 0.60 |" in lines
    assert "| HAM: samples borrowed per step | 70.0 | 80.0 | 75.0 |" in lines
    assert "| HAM: final sign-conflict rate | 0.050 | 0.070 | 0.060 |" in lines
    assert not any("TIES" in line for line in lines)
    assert diagnostics_markdown([row("erm", "a", 0)], {"erm": "ERM"}) == "(no rows with diagnostics yet)"
