"""Helpers shared by the command modules: how a command reports bad input and stops."""

from __future__ import annotations

from typing import NoReturn

import typer


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one `error: ...` line on stderr and exit with `code` (2, the convention for bad input)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=code)
