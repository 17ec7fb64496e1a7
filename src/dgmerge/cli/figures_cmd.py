"""`dgmerge figures RUN_DIR`: every figure and table a run directory supports (owned by reports)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def figures(
    run_dir: Path = typer.Argument(..., help="A run directory (holds results.jsonl, logs/, models/)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default RUN_DIR/figures)."),
    tsne: bool = typer.Option(True, "--tsne/--no-tsne", help="t-SNE grids of saved models (needs scikit-learn)."),
    max_images: int = typer.Option(100, "--max-images", min=3, help="t-SNE: images per domain."),
    tsne_models: Optional[List[str]] = typer.Option(None, "--tsne-model",
                                                    help="t-SNE: saved model names to compare (repeat; default "
                                                    "θ0 under its head -- linear_probe or zero_shot -- and ham)."),
    data: Optional[Path] = typer.Option(None, "--data", help="t-SNE: dataset folder (default RUN_DIR/data/<dataset>)."),
    smooth: int = typer.Option(10, "--smooth", min=1, help="Running-mean window (steps) for the curves."),
    force: bool = typer.Option(False, "--force", help="Overwrite figures and report.md that already exist."),
) -> None:
    """Write loss curves, HAM diagnostics, sensitivity plots, t-SNE and report.md; print the files written."""
    from dgmerge.reports.run_figures import write_run_figures

    try:
        report = write_run_figures(run_dir, out, tsne=tsne, max_images=max_images, tsne_models=tsne_models,
                                   data_dir=data, smooth=smooth, force=force, log=typer.echo)
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2)
    for note in report.notes:
        typer.echo(f"note: {note}")
    if report.written:
        typer.echo(f"wrote {len(report.written)} file(s):")
        for path in report.written:
            typer.echo(f"  {path}")
    else:
        typer.echo("wrote no files")


def register(app: typer.Typer) -> None:
    """Add the `figures` command to the root app."""
    app.command("figures")(figures)
