"""Markdown tables, built in one place: the header, the alignment row and the body rows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

ALIGNMENTS = {"l": "---", "c": ":---:", "r": "---:"}


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str) -> list[str]:
    """The lines of a markdown table. `align` has one letter per column: l(eft), c(entre) or
    r(ight). An empty cell renders as "| |". A row of the wrong width is an error, not a table
    whose columns silently shift."""
    if len(align) != len(header) or set(align) - set(ALIGNMENTS):
        raise ValueError(f"align {align!r} needs one of l/c/r per column of {list(header)}")

    def line(cells: Sequence[str]) -> str:
        if len(cells) != len(header):
            raise ValueError(f"row {list(cells)} has {len(cells)} cells, the header {len(header)}")
        return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"

    return [line(header), "|" + "|".join(ALIGNMENTS[a] for a in align) + "|", *map(line, rows)]


__all__ = ["ALIGNMENTS", "markdown_table"]
