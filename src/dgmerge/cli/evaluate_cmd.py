"""`dgmerge evaluate`: accuracy of a saved model on a dataset's domains."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dgmerge.cli.common import fail


def evaluate(
    model: Path = typer.Argument(..., help="A model written by dgmerge (safetensors with metadata)."),
    data: Path = typer.Option(..., help="DomainBed dataset dir to score, e.g. ../shared/data/PACS."),
    domains: Optional[list[str]] = typer.Option(None, "--domain", help="Domain to score; repeat (default all)."),
    like: Optional[Path] = typer.Option(None, help="Borrow architecture metadata from this model "
                                        "(for merged state dicts written by `dgmerge merge`)."),
    batch_size: int = typer.Option(64, help="Evaluation batch size."),
    max_images: Optional[int] = typer.Option(None, help="Score only the first N images of each domain."),
    device: str = typer.Option("auto", "--device", help="auto (the first GPU if any) | cpu | cuda | cuda:N."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 | fp16 (autocast)."),
) -> None:
    """Accuracy of a saved model on every image of each domain of a dataset."""
    from dgmerge.evaluation.saved_models import score_model
    from dgmerge.reports.markdown import markdown_table

    try:
        scores = score_model(model, data, domains, like=like, batch_size=batch_size, max_images=max_images,
                             device=device, precision=precision)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    rows = [[domain, str(count), f"{100 * acc:.1f}"] for domain, (count, acc) in scores.items()]
    typer.echo("\n".join(markdown_table(["domain", "images", "accuracy"], rows, "lrr")))


def register(app: typer.Typer) -> None:
    """Add `dgmerge evaluate` to the root app."""
    app.command()(evaluate)
