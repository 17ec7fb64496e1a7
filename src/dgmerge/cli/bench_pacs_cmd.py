"""`dgmerge bench pacs-cpu`: the PACS benchmark (filled in by the PACS benchmark module)."""

from __future__ import annotations

import typer


def register(bench_app: typer.Typer) -> None:
    """Add the PACS benchmark subcommands."""
