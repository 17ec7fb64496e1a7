"""`dgmerge report`: the results table of a run or sweep directory (and optionally its figures)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from dgmerge.cli.common import fail


def report(
    results: Path = typer.Argument(..., help="A results.jsonl file, a run directory, or a sweep directory."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Also write the table as CSV here."),
    metric: str = typer.Option("test_acc", help="Row field to tabulate (test_acc or val_acc)."),
    select: str = typer.Option("val", help="Sweeps and HAM's tuning points: 'val' keeps, per test domain, seed and method, the "
                               "hyperparameters with the best source-validation accuracy; 'none' keeps all."),
    figures: bool = typer.Option(False, "--figures", help="Also write the figures of the run directory "
                                 "(of every job, for a sweep) into its figures/ folder, as `dgmerge figures`."),
) -> None:
    """Print a markdown table: rows = methods, columns = test domains + Avg, mean ± std over seeds."""
    from dgmerge.evaluation.results import read_results
    from dgmerge.atomic import write_text_atomic
    from dgmerge.pipeline.sweep import select_by_validation, sweep_results
    from dgmerge.reports.table import build_tables, to_csv, to_markdown

    if select not in ("val", "none"):
        fail(f"--select must be 'val' or 'none', got {select!r}")
    is_sweep = results.is_dir() and (results / "jobs").is_dir()
    if results.is_dir() and not is_sweep:
        results = results / "results.jsonl"
    try:
        rows = sweep_results(results) if is_sweep else read_results(results)
        if select == "val" and (is_sweep or any(r.get("tuning_of") for r in rows)):
            rows = select_by_validation(rows)
        tables = build_tables(rows, metric=metric)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    except KeyError as exc:
        fail(f"{results}: rows have no field {exc}")
    if not tables:
        fail(f"{results} holds no result rows")
    typer.echo("\n".join(to_markdown(t) for t in tables))
    if csv_path is not None:
        write_text_atomic(csv_path, to_csv(tables))
        typer.echo(f"CSV written to {csv_path}")
    if figures:
        _write_figures(results, is_sweep)


def _write_figures(results: Path, is_sweep: bool) -> None:
    from dgmerge.reports.run_figures import write_run_figures

    run_dirs = sorted(p.parent for p in results.glob("jobs/*/results.jsonl")) if is_sweep else [results.parent]
    for run_dir in run_dirs:
        made = write_run_figures(run_dir, data_dir=_dataset_dir(run_dir), log=typer.echo)
        for note in made.notes:
            typer.echo(f"  note: {note}")
        typer.echo(f"{len(made.written)} figure file(s) in {run_dir / 'figures'}")


def _dataset_dir(run_dir: Path) -> Optional[Path]:
    """The dataset a sweep job ran on (from its config.json), for figures that need images."""
    try:
        data = json.loads((run_dir / "config.json").read_text())["config"]["data"]
    except (OSError, KeyError, ValueError):
        return None
    return Path(data["root"]) / data["dataset"]


def register(app: typer.Typer) -> None:
    """Add `dgmerge report` to the root app."""
    app.command()(report)
