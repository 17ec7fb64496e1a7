"""`dgmerge sweep`: every hyperparameter variant × seed × test domain of a config, resumable."""

from __future__ import annotations

from pathlib import Path

import typer

from dgmerge.cli.common import fail
from dgmerge.config import ConfigError


def sweep(
    config: Path = typer.Argument(..., help="Experiment YAML with a `sweep:` section (grid and/or trials+space)."),
) -> None:
    """Run every hyperparameter variant × seed × test domain; finished jobs are skipped on rerun."""
    from dgmerge.pipeline.sweep import run_sweep, select_by_validation, sweep_results
    from dgmerge.reports.table import build_tables, to_markdown

    try:
        root = run_sweep(config, log=typer.echo)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    rows = select_by_validation(sweep_results(root))
    if rows:
        typer.echo("\n".join(to_markdown(t) for t in build_tables(rows)))
    typer.echo(f"per-job results under {root / 'jobs'}; `dgmerge report {root}` selects by source validation")


def register(app: typer.Typer) -> None:
    """Add `dgmerge sweep` to the root app."""
    app.command()(sweep)
