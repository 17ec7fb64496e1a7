"""`dgmerge data check` and `dgmerge data download` (owned by the data layer)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from dgmerge.cli.common import fail

DATA_HELP = "Inspect and download DomainBed-layout datasets."


def _print_report(report, console) -> None:  # noqa: ANN001 (rich/report types imported lazily)
    from rich.table import Table

    index = report.index
    table = Table(title=f"{index.root}  ({len(index.domains)} domains, {index.num_classes} classes)")
    table.add_column("class")
    for domain in index.domains:
        table.add_column(domain, justify="right")
    table.add_column("total", justify="right", style="bold")
    for name in index.classes:
        row = [report.counts[d][name] for d in index.domains]
        cells = [f"[red]{n}[/red]" if n == 0 else str(n) for n in row]
        table.add_row(name, *cells, str(sum(row)))
    totals = report.totals
    table.add_section()
    table.add_row("total", *(str(totals[d]) for d in index.domains), str(sum(totals.values())), style="bold")
    console.print(table)
    mode = "decoded fully (--deep)" if report.deep else "header-verified (use --deep to decode fully)"
    console.print(f"{sum(totals.values())} images {mode}; {len(report.bad_files)} unreadable")
    # soft_wrap: a long image path stays one line (the terminal wraps it), so it can be copied whole.
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    for problem in report.problems:
        console.print(f"[red]problem:[/red] {problem}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the `data` sub-app (check, download) to the root app."""
    data_app = typer.Typer(name="data", help=DATA_HELP, no_args_is_help=True, add_completion=False)
    app.add_typer(data_app, name="data")

    @data_app.command("check")
    def check_command(
        dataset_dir: Path = typer.Argument(..., metavar="ROOT/DATASET",
                                           help="Dataset folder, e.g. data/PACS (holding <domain>/<class>/<image>)."),
        deep: bool = typer.Option(False, "--deep", help="Decode every image fully (slower; finds truncated files)."),
        workers: int = typer.Option(8, "--workers", "-j", min=1, help="Threads opening images."),
        domains: Optional[List[str]] = typer.Option(None, "--domain", "-d", help="Only this domain (repeatable)."),
    ) -> None:
        """Images per domain and class, unreadable files and class sets that differ between domains.

        Exits 1 if any problem is found, 2 if the folder cannot be read as a dataset.
        """
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from dgmerge.data.check import check_dataset
        from dgmerge.data.errors import DataError

        console = Console()
        bar = Progress(TextColumn("checking images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                       console=Console(stderr=True), transient=True)
        task = bar.add_task("check", total=None)
        try:
            with bar:
                report = check_dataset(dataset_dir, deep=deep, workers=workers, domains=domains,
                                       on_progress=lambda done, total: bar.update(task, completed=done, total=total))
        except DataError as exc:
            fail(str(exc))
        _print_report(report, console)
        if not report.ok:
            raise typer.Exit(code=1)

    @data_app.command("download")
    def download_command(
        name: str = typer.Argument(..., help="PACS, VLCS, OfficeHome, TerraIncognita or DomainNet."),
        root: Path = typer.Option(Path("data"), "--root", "-r", help="Folder to put the dataset folder in."),
        force: bool = typer.Option(False, "--force", help="Replace an existing dataset folder."),
    ) -> None:
        """Download a dataset with DomainBed's archives and folder names into ROOT/<folder>."""
        from dgmerge.data.download import download_dataset
        from dgmerge.data.errors import DataError

        try:
            path = download_dataset(name, root, force=force, log=typer.echo)
        except (DataError, FileExistsError) as exc:
            fail(str(exc))
        except OSError as exc:
            fail(f"download of {name} failed: {exc} (nothing was written under {root}/; safe to retry)", code=1)
        typer.echo(f"next: dgmerge data check {path}")
