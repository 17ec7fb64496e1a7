"""`dgmerge merge` and `dgmerge inspect` (owned by the merging library)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the merging commands to the root app."""
