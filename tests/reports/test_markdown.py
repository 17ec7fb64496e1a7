import pytest

from dgmerge.reports.markdown import markdown_table


def test_lines_by_hand():
    lines = markdown_table(["", "a", "Avg"], [["ERM", "1.0", "2.0"], ["HAM", "", "–"]], "lcr")
    assert lines == [
        "| | a | Avg |",
        "|---|:---:|---:|",
        "| ERM | 1.0 | 2.0 |",
        "| HAM | | – |",
    ]


def test_header_only_table_has_two_lines():
    assert markdown_table(["x"], [], "r") == ["| x |", "|---:|"]


def test_row_of_wrong_width_is_refused():
    with pytest.raises(ValueError, match="has 1 cells, the header 2"):
        markdown_table(["a", "b"], [["only one"]], "ll")


@pytest.mark.parametrize("align", ["l", "lx"])
def test_alignment_must_name_each_column(align):
    with pytest.raises(ValueError, match="one of l/c/r per column"):
        markdown_table(["a", "b"], [], align)
