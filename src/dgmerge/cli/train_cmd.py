"""`dgmerge train`: one leave-one-domain-out experiment from a config."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dgmerge.cli.common import fail
from dgmerge.config import ConfigError, load_config, parse_overrides


def train(
    config: Path = typer.Argument(..., help="YAML experiment config, or a shipped one by name: "
                                  "pacs_mobilenetv2, clip_vitb16_openclip."),
    overrides: list[str] = typer.Option([], "--set", help="Override a field: --set train.lr=1e-4 (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (overrides output_dir)."),
) -> None:
    """Run a leave-one-domain-out experiment from a config: probe/zero-shot, ERM, per-source models, merge."""
    from dgmerge.pipeline.experiment import run_experiment
    from dgmerge.reports.table import build_tables, to_markdown

    try:
        extra = parse_overrides(overrides)
        if out is not None:
            extra["output_dir"] = str(out)
        cfg = load_config(config, extra)
        rows = run_experiment(cfg, log=typer.echo)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if rows:
        typer.echo("\n".join(to_markdown(t) for t in build_tables(rows)))
    typer.echo(f"results appended to {cfg.output_dir / 'results.jsonl'}")


def register(app: typer.Typer) -> None:
    """Add `dgmerge train` to the root app."""
    app.command()(train)
