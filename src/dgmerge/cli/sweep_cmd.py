"""`dgmerge sweep`: every hyperparameter variant × seed × test domain of a config, resumable."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from dgmerge.cli.common import fail
from dgmerge.config import ConfigError


class Launcher(str, Enum):
    """Where the jobs of a sweep run (the choices of --launcher)."""

    local = "local"
    slurm = "slurm"


def sweep(
    config: Path = typer.Argument(..., help="Experiment YAML with a `sweep:` section (grid and/or trials+space)."),
    launcher: Optional[Launcher] = typer.Option(
        None, "--launcher", help="local: one job after the other here; slurm: a job array through submitit "
                                 "(resources from `sweep.slurm`). Default: the config's `sweep.launcher`."),
    device: Optional[str] = typer.Option(
        None, "--device", help="train.device of every job: auto, cpu, cuda or cuda:N (job folders stay the same)."),
) -> None:
    """Run every hyperparameter variant × seed × test domain; finished jobs are skipped on rerun."""
    from dgmerge.pipeline.sweep import SweepError, run_sweep, select_by_validation, sweep_results
    from dgmerge.reports.table import build_tables, to_markdown

    settings: dict[str, Any] = {"train.device": device} if device is not None else {}
    try:
        root = run_sweep(config, log=typer.echo, launcher=launcher.value if launcher else None, settings=settings)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    except SweepError as exc:  # jobs failed or could not be submitted: not bad input, so exit 1
        fail(str(exc), code=1)
    rows = select_by_validation(sweep_results(root))
    if rows:
        typer.echo("\n".join(to_markdown(t) for t in build_tables(rows)))
    typer.echo(f"per-job results under {root / 'jobs'}; `dgmerge report {root}` selects by source validation")


def register(app: typer.Typer) -> None:
    """Add `dgmerge sweep` to the root app."""
    app.command()(sweep)
